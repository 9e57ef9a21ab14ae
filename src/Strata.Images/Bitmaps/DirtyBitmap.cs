using System.Numerics;

namespace Strata.Images.Bitmaps;

/// <summary>
/// A dirty bitmap over a disk of <see cref="Size"/> bytes, one bit per <see cref="Granularity"/> bytes (QEMU's
/// BdrvDirtyBitmap over an HBitmap). Offsets and lengths are in bytes; a byte range marks every granule it touches.
/// Thread-safe: guest writes record into it concurrently with readers (NBD block status, backup).
/// The attributes (name, enabled, persistent, ...) are the block layer's; the bits are format-neutral, and
/// <see cref="SerializePart"/> gives QEMU's on-disk order (bit i of the bitmap = bit i%8 of byte i/8).
/// </summary>
public sealed class DirtyBitmap
{
    public const int MinGranularityBits = 9;
    public const int MaxGranularityBits = 31;
    /// <summary>At most 2^32 bits (512 MiB of memory, QEMU's BME_MAX_PHYS_SIZE): larger ones are refused, not allocated.</summary>
    public const long MaxBits = 1L << 32;

    private readonly Lock _gate = new();
    private ulong[] _words;       // bit i = granule i
    private ulong[] _summary;     // bit j = words[j] != 0, so that scans skip clean areas 64 words at a time
    private long _bits;
    private long _count;          // dirty granules

    /// <param name="size">Bytes covered (the disk length).</param>
    /// <param name="granularity">Bytes per bit: a power of two, 512 to 2 GiB.</param>
    public DirtyBitmap(long size, uint granularity, string? name = null)
    {
        if (!BitOperations.IsPow2(granularity) || granularity < 1u << MinGranularityBits || granularity > 1u << MaxGranularityBits)
            throw new ArgumentOutOfRangeException(nameof(granularity), "Granularity must be power of 2 and at least 512");
        ArgumentOutOfRangeException.ThrowIfNegative(size);
        GranularityBits = BitOperations.TrailingZeroCount(granularity);
        Name = name;
        Size = size;
        _bits = BitsFor(size);
        if (_bits > MaxBits)
            throw new ArgumentOutOfRangeException(nameof(size), $"A bitmap of {_bits} bits (disk of {size} bytes at granularity {granularity}) is too large");
        _words = new ulong[(_bits + 63) >> 6];
        _summary = new ulong[(_words.Length + 63) >> 6];
    }

    /// <summary>Name, null for an anonymous bitmap (e.g. a backup job's own copy).</summary>
    public string? Name { get; set; }
    public int GranularityBits { get; }
    public uint Granularity => 1u << GranularityBits;
    /// <summary>Bytes covered (the disk length when it was created or last resized).</summary>
    public long Size { get; private set; }
    /// <summary>Number of bits (granules).</summary>
    public long BitCount => Volatile.Read(ref _bits);

    /// <summary>Recording guest writes (QEMU: not disabled). A disabled bitmap keeps its bits.</summary>
    public bool Enabled { get; set; } = true;
    /// <summary>Stored in the image on close (qcow2 persistent bitmaps).</summary>
    public bool Persistent { get; set; }
    /// <summary>Loaded from an image where it was left in use (not stored cleanly): its bits mean nothing; it can only be removed.</summary>
    public bool Inconsistent { get; set; }
    /// <summary>Loaded from an image opened read-only: cannot be changed.</summary>
    public bool ReadOnly { get; set; }
    /// <summary>Held by an operation (a backup job): cannot be changed or removed by others.</summary>
    public bool Busy { get; set; }

    /// <summary>Dirty granules.</summary>
    public long DirtyGranules { get { lock (_gate) return _count; } }

    /// <summary>Dirty bytes as QEMU counts them (granules × granularity; the last granule may pass the disk end).</summary>
    public long DirtyBytes => DirtyGranules << GranularityBits;

    private long BitsFor(long size) => (size + (1L << GranularityBits) - 1) >> GranularityBits;

    /// <summary>Whether the granule holding <paramref name="offset"/> is dirty.</summary>
    public bool Get(long offset)
    {
        long i = offset >> GranularityBits;
        lock (_gate)
            return i >= 0 && i < _bits && (_words[i >> 6] & (1UL << (int)(i & 63))) != 0;
    }

    /// <summary>Marks every granule touched by [offset, offset+length) dirty (hbitmap_set).</summary>
    public void SetRange(long offset, long length)
    {
        if (length <= 0)
            return;
        lock (_gate)
        {
            long first = offset >> GranularityBits;
            long last = Math.Min((offset + length - 1) >> GranularityBits, _bits - 1);
            if (first < 0 || first > last)
                return;
            SetBits(first, last, true);
        }
    }

    /// <summary>
    /// Clears the granules of [offset, offset+length) (hbitmap_reset): the range must start on a granule and end on
    /// one or at the disk end, as QEMU asserts; a partly covered granule would lose a write.
    /// </summary>
    public void ResetRange(long offset, long length)
    {
        if (length <= 0)
            return;
        long g = 1L << GranularityBits;
        if ((offset & (g - 1)) != 0 || (((offset + length) & (g - 1)) != 0 && offset + length < Size))
            throw new ArgumentException($"Reset of [{offset}, +{length}) is not aligned to the granularity {g}");
        lock (_gate)
        {
            long first = offset >> GranularityBits;
            long last = Math.Min((offset + length - 1) >> GranularityBits, _bits - 1);
            if (first <= last)
                SetBits(first, last, false);
        }
    }

    /// <summary>Marks everything dirty.</summary>
    public void SetAll() => SetRange(0, Size);

    /// <summary>Clears everything.</summary>
    public void Clear()
    {
        lock (_gate)
        {
            Array.Clear(_words);
            Array.Clear(_summary);
            _count = 0;
        }
    }

    private void SetBits(long first, long last, bool value)
    {
        long w0 = first >> 6, w1 = last >> 6;
        for (long w = w0; w <= w1; w++)
        {
            ulong mask = ulong.MaxValue;
            if (w == w0)
                mask &= ulong.MaxValue << (int)(first & 63);
            if (w == w1)
                mask &= ulong.MaxValue >> (63 - (int)(last & 63));
            ulong old = _words[w];
            ulong nw = value ? old | mask : old & ~mask;
            if (nw == old)
                continue;
            _count += BitOperations.PopCount(nw) - BitOperations.PopCount(old);
            _words[w] = nw;
            if (nw == 0)
                _summary[w >> 6] &= ~(1UL << (int)(w & 63));
            else
                _summary[w >> 6] |= 1UL << (int)(w & 63);
        }
    }

    /// <summary>
    /// The first dirty byte offset in [offset, offset+maxLength) (rounded down to its granule, but not below
    /// <paramref name="offset"/>), or -1 (bdrv_dirty_bitmap_next_dirty). maxLength &lt; 0 = to the end.
    /// </summary>
    public long NextDirty(long offset, long maxLength = -1)
    {
        long end = maxLength < 0 ? Size : Math.Min(Size, offset + maxLength);
        if (offset < 0 || offset >= end)
            return -1;
        lock (_gate)
        {
            long bit = FindBit(offset >> GranularityBits, (end - 1) >> GranularityBits, true);
            return bit < 0 ? -1 : Math.Max(offset, bit << GranularityBits);
        }
    }

    /// <summary>The first clean byte offset in [offset, offset+maxLength), or -1 (bdrv_dirty_bitmap_next_zero).</summary>
    public long NextClean(long offset, long maxLength = -1)
    {
        long end = maxLength < 0 ? Size : Math.Min(Size, offset + maxLength);
        if (offset < 0 || offset >= end)
            return -1;
        lock (_gate)
        {
            long bit = FindBit(offset >> GranularityBits, (end - 1) >> GranularityBits, false);
            return bit < 0 ? -1 : Math.Max(offset, bit << GranularityBits);
        }
    }

    /// <summary>
    /// The next dirty area inside [offset, end): its start and length, clipped to the range and to maxLength
    /// (bdrv_dirty_bitmap_next_dirty_area); null when the range is clean.
    /// </summary>
    public (long Offset, long Length)? NextDirtyArea(long offset, long end, long maxLength = long.MaxValue)
    {
        end = Math.Min(end, Size);
        long start = NextDirty(offset, end - offset);
        if (start < 0)
            return null;
        long limit = Math.Min(end, start + Math.Min(maxLength, end - start));
        long clean = NextClean(start, limit - start);
        return (start, (clean < 0 ? limit : clean) - start);
    }

    /// <summary>Runs of equal state covering [offset, end), in order: what NBD's qemu:dirty-bitmap context reports.</summary>
    public IEnumerable<(long Offset, long Length, bool Dirty)> Extents(long offset = 0, long end = -1)
    {
        if (end < 0 || end > Size)
            end = Size;
        while (offset < end)
        {
            bool dirty = Get(offset);
            long next = dirty ? NextClean(offset, end - offset) : NextDirty(offset, end - offset);
            if (next < 0)
                next = end;
            yield return (offset, next - offset, dirty);
            offset = next;
        }
    }

    /// <summary>First bit in [from, to] equal to <paramref name="value"/>, or -1. Caller holds the lock.</summary>
    private long FindBit(long from, long to, bool value)
    {
        if (from > to)
            return -1;
        long w = from >> 6, wEnd = to >> 6;
        ulong cur = (value ? _words[w] : ~_words[w]) & (ulong.MaxValue << (int)(from & 63));
        while (cur == 0)
        {
            if (++w > wEnd)
                return -1;
            if (value && (w = NextNonZeroWord(w, wEnd)) < 0)
                return -1;
            cur = value ? _words[w] : ~_words[w];
        }
        long bit = (w << 6) + BitOperations.TrailingZeroCount(cur);
        return bit <= to ? bit : -1;
    }

    /// <summary>The first word at or after w (up to wEnd) with a dirty bit, found through the summary, or -1.</summary>
    private long NextNonZeroWord(long w, long wEnd)
    {
        long s = w >> 6;
        ulong sm = _summary[s] & (ulong.MaxValue << (int)(w & 63));
        while (sm == 0)
        {
            if ((++s << 6) > wEnd)
                return -1;
            sm = _summary[s];
        }
        long nw = (s << 6) + BitOperations.TrailingZeroCount(sm);
        return nw <= wEnd ? nw : -1;
    }

    /// <summary>
    /// ORs <paramref name="source"/> into this bitmap (block-dirty-bitmap-merge): both must cover the same size;
    /// with another granularity, every granule here that holds a dirty byte of the source becomes dirty.
    /// </summary>
    public void Merge(DirtyBitmap source)
    {
        ArgumentNullException.ThrowIfNull(source);
        if (source.Size != Size)
            throw new InvalidOperationException("Bitmaps are incompatible and can't be merged");
        if (ReferenceEquals(source, this))
            return;
        if (source.GranularityBits == GranularityBits)
        {
            ulong[] copy;
            lock (source._gate)
                copy = (ulong[])source._words.Clone();
            lock (_gate)
            {
                for (long w = 0; w < copy.Length; w++)
                {
                    ulong nw = _words[w] | copy[w];
                    if (nw == _words[w])
                        continue;
                    _count += BitOperations.PopCount(nw) - BitOperations.PopCount(_words[w]);
                    _words[w] = nw;
                    _summary[w >> 6] |= 1UL << (int)(w & 63);
                }
            }
            return;
        }
        foreach (var (off, len, dirty) in source.Extents())
            if (dirty)
                SetRange(off, len);
    }

    /// <summary>A copy of the bits and attributes (a backup job's frozen view).</summary>
    public DirtyBitmap Copy(string? name = null)
    {
        var c = new DirtyBitmap(Size, Granularity, name) { Enabled = Enabled };
        lock (_gate)
        {
            Array.Copy(_words, c._words, _words.Length);
            Array.Copy(_summary, c._summary, _summary.Length);
            c._count = _count;
        }
        return c;
    }

    /// <summary>Changes the covered size (disk resize): bits past the new end are dropped, new ones are clean.</summary>
    public void Resize(long newSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(newSize);
        lock (_gate)
        {
            long bits = BitsFor(newSize);
            if (bits > MaxBits)
                throw new ArgumentOutOfRangeException(nameof(newSize), $"A bitmap of {bits} bits is too large");
            if (bits < _bits)
                SetBits(bits, _bits - 1, false);
            Array.Resize(ref _words, (int)((bits + 63) >> 6));
            var summary = new ulong[(_words.Length + 63) >> 6];
            for (long w = 0; w < _words.Length; w++)
                if (_words[w] != 0)
                    summary[w >> 6] |= 1UL << (int)(w & 63);
            _summary = summary;
            _bits = bits;
            Size = newSize;
        }
    }

    // ---- QEMU's serialisation (hbitmap_serialize_part): little-endian 64-bit words, bit i = granule i -------

    /// <summary>Disk bytes whose bits fill <paramref name="serializedBytes"/> bytes (a qcow2 bitmap data cluster).</summary>
    public long SerializationCoverage(int serializedBytes) => (long)serializedBytes << (GranularityBits + 3);

    /// <summary>Bytes the bits of [offset, offset+length) take when serialised (whole 64-bit words).</summary>
    public long SerializationSize(long offset, long length)
    {
        if (length <= 0)
            return 0;
        long bits = BitsFor(Math.Min(Size, offset + length)) - (offset >> GranularityBits);
        return ((bits + 63) >> 6) * 8;
    }

    /// <summary>Writes the bits of [offset, offset+length) to <paramref name="dst"/>; offset must start a 64-granule word.</summary>
    public void SerializePart(Span<byte> dst, long offset, long length)
    {
        long firstWord = CheckSerialRange(offset);
        int n = (int)(SerializationSize(offset, length) / 8);
        lock (_gate)
            for (int k = 0; k < n; k++)
                System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(dst[(k * 8)..], _words[firstWord + k]);
    }

    /// <summary>Replaces the bits of [offset, offset+length) with those in <paramref name="src"/> (bits past the disk end are ignored).</summary>
    public void DeserializePart(ReadOnlySpan<byte> src, long offset, long length)
    {
        long firstWord = CheckSerialRange(offset);
        int n = (int)(SerializationSize(offset, length) / 8);
        lock (_gate)
        {
            for (int k = 0; k < n; k++)
            {
                long w = firstWord + k;
                ulong nw = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(src[(k * 8)..]);
                if (w == _words.Length - 1 && (_bits & 63) != 0)
                    nw &= (1UL << (int)(_bits & 63)) - 1;
                _count += BitOperations.PopCount(nw) - BitOperations.PopCount(_words[w]);
                _words[w] = nw;
                if (nw == 0)
                    _summary[w >> 6] &= ~(1UL << (int)(w & 63));
                else
                    _summary[w >> 6] |= 1UL << (int)(w & 63);
            }
        }
    }

    private long CheckSerialRange(long offset)
    {
        long bit = offset >> GranularityBits;
        if (offset < 0 || (bit & 63) != 0 || (offset & ((1L << GranularityBits) - 1)) != 0)
            throw new ArgumentException($"Serialisation offset {offset} does not start a 64-granule word");
        return bit >> 6;
    }
}
