using System.Buffers;
using System.Buffers.Binary;
using Strata.Images.Format;
using Strata.Images.Storage;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

/// <summary>Options for opening a qcow2 image.</summary>
public sealed record Qcow2OpenOptions
{
    /// <summary>Bytes of L2 tables kept in memory (QEMU's l2-cache-size); null = enough for the whole disk, at most 32 MiB.</summary>
    public long? L2CacheSize { get; init; }

    /// <summary>Bytes of refcount blocks kept in memory (QEMU's refcount-cache-size); null = 4 clusters (at least 256 KiB).</summary>
    public long? RefcountCacheSize { get; init; }

    /// <summary>
    /// Opens the backing image named in the header, or null not to open one (reads of unallocated ranges then
    /// return zeroes). The policy lives with the caller: nothing named inside an image is opened implicitly.
    /// </summary>
    public Func<Qcow2Header, CancellationToken, ValueTask<IImage?>>? OpenBacking { get; init; }

    /// <summary>Open a dirty (lazy refcounts) or corrupt image without repairing or refusing it (for check).</summary>
    public bool ForCheck { get; init; }

    /// <summary>Open read-only even when the storage is writable (a read-only node over a shared file node).</summary>
    public bool ReadOnly { get; init; }

    /// <summary>Whether disposing the image also disposes its storage (false when a block graph owns the file node).</summary>
    public bool OwnsStorage { get; init; } = true;

    /// <summary>Whether disposing the image also disposes its backing image (false when a block graph owns the backing node).</summary>
    public bool OwnsBacking { get; init; } = true;
}

/// <summary>
/// A qcow2 image (v2 and v3) over an <see cref="IStorage"/>. Metadata (L1, L2 tables, refcounts) is changed
/// under one async lock and written back in a crash-safe order on flush; writes to clusters that are already
/// allocated and not shared go straight to the file without the lock.
/// </summary>
public sealed partial class Qcow2Image : IImage
{
    private readonly IStorage _file;
    private readonly Qcow2Header _h;
    private readonly int _cb;           // cluster bits
    private readonly int _cs;           // cluster size
    private readonly bool _ext;         // extended L2
    private readonly int _l2Bits;       // log2(entries per L2 table)
    private readonly int _scBits;       // log2(subcluster size)
    private ulong[] _l1;
    private readonly SortedSet<int> _dirtyL1 = [];
    private readonly MetadataCache _l2Cache;
    private RefcountTable _rc;          // replaced when amend changes the refcount width
    private readonly MetadataMap _metadata;
    private readonly SemaphoreSlim _lock = new(1, 1);
    private IImage? _backing;
    private int _hostIoInFlight;      // reads and writes of mapped clusters running without the lock; frees wait for them
    private TaskCompletionSource? _hostIoDrained;
    private bool _dirtyBitSet;
    private bool _ownsStorage = true;
    private bool _readOnly;
    private bool _ownsBacking = true;
    private bool _disposed;

    private Qcow2Image(IStorage file, Qcow2Header header, ulong[] l1, ulong[] refTable, Qcow2OpenOptions options)
    {
        _file = file;
        _h = header;
        _cb = header.ClusterBits;
        _cs = header.ClusterSize;
        _ext = header.ExtendedL2;
        _l2Bits = _cb - (_ext ? 4 : 3);
        _scBits = _cb - 5;
        _l1 = l1;
        long l2Bytes = options.L2CacheSize ?? Math.Min(32L << 20, Math.Max((long)_cs * 2, (header.L1Size + 1L) * _cs));
        _l2Cache = new MetadataCache(file, _cs, (int)Math.Clamp(l2Bytes / _cs, 2, 1 << 20))
        {
            LoadEvent = DebugEvent.L2Load, UpdateEvent = DebugEvent.L2Update,
        };
        long rcBytes = options.RefcountCacheSize ?? Math.Max(4L * _cs, 256 * 1024);
        _metadata = new MetadataMap(_cb);
        _rc = new RefcountTable(file, header, refTable, (int)Math.Clamp(rcBytes / _cs, 2, 1 << 20), _metadata);
    }

    public string FormatName => "qcow2";
    public string FileName => _file.Name;
    public IStorage Storage => _file;
    /// <summary>Virtual size in whole 512-byte sectors, as QEMU sees it (a header size that is not a multiple of 512 is rounded down).</summary>
    public long Size => _h.Size & ~511L;
    public bool IsReadOnly => _readOnly;
    public IImage? Backing => _backing;

    /// <summary>
    /// Replaces the image used for unallocated ranges (not what the header names: see <see cref="Qcow2Header.BackingFileName"/>).
    /// The caller drains I/O first; ownership follows <see cref="Qcow2OpenOptions.OwnsBacking"/>.
    /// </summary>
    public void SetBacking(IImage? backing) => _backing = backing;
    public string? BackingFileName => _h.BackingFileName;
    public string? BackingFormat => _h.BackingFormat;
    public int AllocationGranularity => _ext ? 1 << _scBits : _cs;

    /// <summary>The parsed header (read-only use: the image owns it).</summary>
    public Qcow2Header Header => _h;
    public int ClusterSize => _cs;

    internal RefcountTable Refcounts => _rc;
    internal IReadOnlyList<ulong> L1Table => _l1;

    /// <summary>A read of qcow2_do_open: an I/O error (a disk's, an injected one) fails with QEMU's message and the errno's text.</summary>
    private static async ValueTask ReadForOpenAsync(IStorage file, Memory<byte> buffer, long offset, string what, CancellationToken ct)
    {
        try
        {
            await file.ReadAsync(buffer, offset, ct).ConfigureAwait(false);
        }
        catch (IOException e) when (e.HResult is > 0 and < 4096)
        {
            throw new ImageException($"{what}: {System.Runtime.InteropServices.Marshal.GetPInvokeErrorMessage(e.HResult)}", e);
        }
    }

    /// <summary>Opens a qcow2 image, validating the header and tables before using them.</summary>
    public static async ValueTask<Qcow2Image> OpenAsync(IStorage file, Qcow2OpenOptions? options = null, CancellationToken ct = default)
    {
        options ??= new Qcow2OpenOptions();
        long fileLength = file.Length;
        // 64 KiB (the default cluster size) at once: most images need no second read for cluster 0.
        var first = new byte[Math.Min(65536, Math.Max(fileLength, V2HeaderLength))];
        await ReadForOpenAsync(file, first, 0, "Could not read qcow2 header", ct).ConfigureAwait(false);
        if (fileLength < V2HeaderLength)
            throw new ImageException($"Image is not in qcow2 format: '{file.Name}' is too short");
        var probe = Qcow2Header.Parse(first, long.MaxValue, file.Name); // cluster size is validated here
        byte[] cluster0 = first;
        if (probe.ClusterSize > first.Length)
        {
            cluster0 = new byte[probe.ClusterSize];
            await ReadForOpenAsync(file, cluster0, 0, "Could not read qcow2 header", ct).ConfigureAwait(false);
        }
        var h = Qcow2Header.Parse(cluster0, fileLength, file.Name);

        if ((h.IncompatibleFeatures & ~IncompatKnownMask) != 0)
        {
            var names = new List<string>();
            for (int bit = 0; bit < 64; bit++)
                if ((h.IncompatibleFeatures & ~IncompatKnownMask & (1UL << bit)) != 0)
                    names.Add(h.IncompatibleFeatureName(bit));
            throw new UnsupportedFeatureException($"Unsupported qcow2 feature(s) in '{file.Name}': {string.Join(", ", names)}");
        }
        if (h.CryptMethod != 0)
            throw new UnsupportedFeatureException($"'{file.Name}' is encrypted (crypt_method {h.CryptMethod}); encrypted qcow2 images are not supported");
        if ((h.IncompatibleFeatures & IncompatDataFile) != 0 || h.ExternalDataFile != null)
            throw new UnsupportedFeatureException($"'{file.Name}' uses an external data file, which is not supported");
        if (h.IsCorrupt && !(options.ReadOnly || file.IsReadOnly) && !options.ForCheck)
            throw new CorruptImageException($"qcow2: Image is corrupt; cannot be opened read/write: '{file.Name}'");

        var refTable = await RefcountTable.LoadTableAsync(file, h, ct).ConfigureAwait(false);
        var l1 = new ulong[h.L1Size];
        if (h.L1Size > 0)
        {
            var raw = new byte[h.L1Size * 8L];
            await ReadForOpenAsync(file, raw, h.L1TableOffset, "Could not read L1 table", ct).ConfigureAwait(false);
            for (int i = 0; i < l1.Length; i++)
                l1[i] = BinaryPrimitives.ReadUInt64BigEndian(raw.AsSpan(i * 8));
        }

        var img = new Qcow2Image(file, h, l1, refTable, options) { _ownsStorage = options.OwnsStorage, _ownsBacking = options.OwnsBacking, _readOnly = options.ReadOnly || file.IsReadOnly };
        img._dirtyBitSet = h.IsDirty;
        try
        {
            var bitmapDirectory = await img.BuildMetadataMapAsync(enforce: !img._readOnly && !options.ForCheck, validate: !options.ForCheck, ct).ConfigureAwait(false);
            if (!img._readOnly && !options.ForCheck)
            {
                if (h.IsDirty)
                    await img.RepairDirtyAsync(ct).ConfigureAwait(false);
                await img.PrepareForWritingAsync(ct).ConfigureAwait(false);
            }
            // As in QEMU, check too loads the bitmaps: a directory it cannot load fails the open.
            await img.LoadBitmapsAsync(bitmapDirectory, ct).ConfigureAwait(false);
            if (options.OpenBacking != null && h.BackingFileName != null)
                img._backing = await options.OpenBacking(h, ct).ConfigureAwait(false);
        }
        catch
        {
            await img.DisposeAsync().ConfigureAwait(false);
            throw;
        }
        return img;
    }

    /// <summary>
    /// What QEMU does when it opens an image read-write: unknown autoclear bits are cleared (their features may
    /// become stale). Persistent bitmaps are marked in use by <see cref="LoadBitmapsAsync"/>.
    /// </summary>
    private async ValueTask PrepareForWritingAsync(CancellationToken ct)
    {
        if (_h.Version >= 3 && (_h.AutoclearFeatures & ~AutoclearKnownMask) != 0)
        {
            _h.AutoclearFeatures &= AutoclearKnownMask;
            await WriteHeaderAsync(ct).ConfigureAwait(false);
        }
    }

    /// <summary>Releases the metadata lock; caches shrink back to their capacity first, when no table is in use.</summary>
    private void Unlock()
    {
        _l2Cache.Trim();
        _rc.Blocks.Trim();
        _lock.Release();
    }

    /// <summary>
    /// Records where the metadata lives (and validates the snapshot table and bitmap directory, as QEMU does at
    /// open). With <paramref name="enforce"/> (read-write) metadata structures that overlap each other are refused:
    /// writing through them would destroy the image.
    /// </summary>
    /// <param name="validate">Refuse a broken snapshot table or bitmap directory (not when opening for check, which reports them).</param>
    /// <returns>The bitmap directory when it was read, so that loading the bitmaps need not read it again.</returns>
    private async ValueTask<List<BitmapDirectoryEntry>?> BuildMetadataMapAsync(bool enforce, bool validate, CancellationToken ct)
    {
        var conflicts = new List<string>();
        void Add(long offset, long bytes, MetadataKind kind, string what)
        {
            if (_metadata.Add(offset, bytes, kind) is { } other)
                conflicts.Add($"{what} at 0x{offset:x} overlaps the {MetadataMap.Describe(other)}");
        }
        Add(0, _cs, MetadataKind.Header, "header");
        Add(_h.L1TableOffset, _l1.Length * 8L, MetadataKind.ActiveL1, "active L1 table");
        Add(_h.RefcountTableOffset, (long)_h.RefcountTableClusters * _cs, MetadataKind.RefcountTable, "refcount table");
        var refTable = _rc.Table;
        for (int i = 0; i < refTable.Count; i++)
        {
            long off = (long)(refTable[i] & RefTableOffsetMask);
            if (off != 0 && off <= MaxHostOffset && (off & (_cs - 1)) == 0)
                Add(off, _cs, MetadataKind.RefcountBlock, $"refcount block {i}");
        }
        for (int i = 0; i < _l1.Length; i++)
        {
            long off = (long)(_l1[i] & L1OffsetMask);
            if (off != 0 && (off & (_cs - 1)) == 0)
                Add(off, _cs, MetadataKind.ActiveL2, $"L2 table {i}");
        }
        if (_h.SnapshotCount > 0 && validate)
        {
            var snaps = await SnapshotTable.ReadAsync(_file, _h.SnapshotsOffset, _h.SnapshotCount, Size, ct: ct).ConfigureAwait(false);
            (_snapshots, _snapshotsSize) = (snaps.Snapshots, snaps.Size); // snapshot operations need not read it again
            Add(_h.SnapshotsOffset, snaps.Size, MetadataKind.SnapshotTable, "snapshot table");
            foreach (var sn in snaps.Snapshots)
                if (sn.L1TableOffset != 0 && sn.L1Size > 0 && sn.L1TableOffset <= (ulong)MaxHostOffset)
                    Add((long)sn.L1TableOffset, sn.L1Size * 8L, MetadataKind.InactiveL1, $"L1 table of snapshot '{sn.Name}'");
        }
        List<BitmapDirectoryEntry>? directory = null;
        if (_h.Bitmaps is { Count: > 0 } bitmaps && validate)
        {
            // Parsed (and so validated) even for read-only opens, as QEMU does.
            directory = await BitmapDirectory.ReadAsync(_file, bitmaps, _cs, Size, ct).ConfigureAwait(false);
            Add((long)bitmaps.DirectoryOffset, (long)bitmaps.DirectorySize, MetadataKind.BitmapDirectory, "bitmap directory");
        }
        if (enforce && conflicts.Count > 0)
            throw new CorruptImageException($"Metadata overlap in '{_file.Name}': {string.Join("; ", conflicts)}");
        return directory;
    }

    /// <summary>Requests must lie inside the disk.</summary>
    private void CheckRange(long offset, long length)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (offset < 0 || length < 0 || offset > Size || length > Size - offset)
            throw new ArgumentOutOfRangeException(nameof(offset), $"Request [{offset}, +{length}) lies outside the {Size}-byte disk of '{_file.Name}'");
    }

    private void CheckWritable()
    {
        if (_readOnly)
            throw new ImageException($"'{_file.Name}' is opened read-only");
        if (_h.IsCorrupt)
            throw new CorruptImageException($"'{_file.Name}' is marked corrupt; repair it with check -r all");
    }

    /// <summary>Marks the image corrupt on disk (as QEMU's qcow2_signal_corruption) and returns the exception to throw.</summary>
    private async ValueTask<CorruptImageException> SignalCorruptionAsync(string what)
    {
        var ex = new CorruptImageException($"qcow2: Marking image as corrupt: {what}; further corruption events will be suppressed ('{_file.Name}')");
        if (!_readOnly && !_h.IsCorrupt)
        {
            _h.IncompatibleFeatures |= IncompatCorrupt;
            try
            {
                var b = new byte[8];
                BinaryPrimitives.WriteUInt64BigEndian(b, _h.IncompatibleFeatures);
                await _file.WriteAsync(b, 72).ConfigureAwait(false);
                await _file.FlushAsync().ConfigureAwait(false);
            }
            catch (IOException)
            {
                // The corrupt bit is best effort; the request fails either way.
            }
        }
        return ex;
    }

    public async ValueTask DisposeAsync()
    {
        if (_disposed)
            return;
        try
        {
            if (!_readOnly && !_h.IsCorrupt)
                await CloseCleanAsync().ConfigureAwait(false);
        }
        finally
        {
            _disposed = true;
            if (_backing != null && _ownsBacking)
                await _backing.DisposeAsync().ConfigureAwait(false);
            if (_ownsStorage)
                await _file.DisposeAsync().ConfigureAwait(false);
            _lock.Dispose();
        }
    }

    private async ValueTask CloseCleanAsync()
    {
        await StoreBitmapsAsync(default).ConfigureAwait(false);
        await FlushAsync().ConfigureAwait(false);
        if (_dirtyBitSet)
        {
            // Lazy refcounts: refcounts are written only now, then the dirty bit goes.
            await _rc.WriteDirtyAsync(default).ConfigureAwait(false);
            await _file.FlushAsync().ConfigureAwait(false);
            _h.IncompatibleFeatures &= ~IncompatDirty;
            await WriteIncompatibleFeaturesAsync(default).ConfigureAwait(false);
            _dirtyBitSet = false;
        }
    }

    private async ValueTask WriteIncompatibleFeaturesAsync(CancellationToken ct)
    {
        if (_h.Version < 3)
            return;
        var b = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(b, _h.IncompatibleFeatures);
        await _file.WriteAsync(b, 72, ct).ConfigureAwait(false);
        await _file.FlushAsync(ct).ConfigureAwait(false);
    }

    /// <summary>Rewrites cluster 0 from the in-memory header (keeps unknown extensions) and makes it durable.</summary>
    internal async ValueTask WriteHeaderAsync(CancellationToken ct)
    {
        var buf = _h.Serialize();
        await _file.WriteAsync(buf, 0, ct).ConfigureAwait(false);
        await _file.FlushAsync(ct).ConfigureAwait(false);
    }

    // ---- L1/L2 entry helpers ----------------------------------------------------------------------

    private long L1Index(long guestOffset) => guestOffset >> (_cb + _l2Bits);
    private int L2Index(long guestOffset) => (int)((guestOffset >> _cb) & ((1L << _l2Bits) - 1));

    private ulong GetL2Entry(CachedTable t, int i) =>
        BinaryPrimitives.ReadUInt64BigEndian(t.Data.AsSpan(i << (_ext ? 4 : 3)));

    private ulong GetL2Bitmap(CachedTable t, int i) =>
        _ext ? BinaryPrimitives.ReadUInt64BigEndian(t.Data.AsSpan((i << 4) + 8)) : 0;

    private void SetL2(CachedTable t, int i, ulong entry, ulong bitmap = 0)
    {
        BinaryPrimitives.WriteUInt64BigEndian(t.Data.AsSpan(i << (_ext ? 4 : 3)), entry);
        if (_ext)
            BinaryPrimitives.WriteUInt64BigEndian(t.Data.AsSpan((i << 4) + 8), bitmap);
        t.Dirty = true;
    }

    private int CompressedShift => 62 - (_cb - 8);

    private (long Offset, int Bytes) ParseCompressed(ulong entry)
    {
        int x = CompressedShift;
        long off = (long)(entry & ((1UL << x) - 1));
        long sectors = (long)((entry >> x) & ((1UL << (_cb - 8)) - 1)) + 1;
        int bytes = (int)(sectors * CompressedSectorSize - (off & (CompressedSectorSize - 1)));
        return (off, bytes);
    }

    private enum ClusterType { Unallocated, ZeroPlain, ZeroAlloc, Normal, Compressed }

    private ClusterType TypeOf(ulong entry)
    {
        if ((entry & OflagCompressed) != 0)
            return ClusterType.Compressed;
        bool zero = !_ext && (entry & OflagZero) != 0;
        bool hasOffset = (entry & L2OffsetMask) != 0;
        if (zero)
            return hasOffset ? ClusterType.ZeroAlloc : ClusterType.ZeroPlain;
        return hasOffset ? ClusterType.Normal : ClusterType.Unallocated;
    }

    /// <summary>Loads the L2 table for a guest offset, or null when the L1 entry is empty.</summary>
    private async ValueTask<CachedTable?> GetL2Async(long guestOffset, CancellationToken ct)
    {
        long i = L1Index(guestOffset);
        if (i >= _l1.Length)
            return null;
        ulong e = _l1[i];
        long off = (long)(e & L1OffsetMask);
        if (off == 0)
            return null;
        if ((off & (_cs - 1)) != 0)
            throw await SignalCorruptionAsync($"L2 table offset 0x{off:x} unaligned (L1 index: 0x{i:x})").ConfigureAwait(false);
        // A table not in the cache must be on disk: one past the end of the file is a broken reference.
        if (_l2Cache.TryGet(off) == null && off >= _file.Length)
            throw await SignalCorruptionAsync($"L2 table offset 0x{off:x} lies past the end of the image file (L1 index: 0x{i:x})").ConfigureAwait(false);
        return await _l2Cache.GetAsync(off, ct).ConfigureAwait(false);
    }

    private async ValueTask ValidateL2EntryAsync(ulong entry, long guestOffset)
    {
        var type = TypeOf(entry);
        if (type is ClusterType.Normal or ClusterType.ZeroAlloc)
        {
            long host = (long)(entry & L2OffsetMask);
            if ((host & (_cs - 1)) != 0)
                throw await SignalCorruptionAsync($"Cluster allocation offset 0x{host:x} unaligned (guest offset: 0x{guestOffset:x})").ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Before data is written into an existing host cluster: it must lie inside the file (every cluster a table
    /// references was written before the reference) and must not be metadata.
    /// </summary>
    private async ValueTask CheckDataTargetAsync(long host, long length, long guestOffset)
    {
        // Only the cluster start must be inside: a fresh cluster is written sparsely (just the guest data).
        if ((host & ~((long)_cs - 1)) >= _file.Length)
            throw await SignalCorruptionAsync($"Data cluster at 0x{host & ~((long)_cs - 1):x} lies past the end of the image file (guest offset: 0x{guestOffset:x})").ConfigureAwait(false);
        var overlap = _metadata.Overlap(host >> _cb, ((host + length - 1) >> _cb) - (host >> _cb) + 1);
        if (overlap != null)
            throw await SignalCorruptionAsync($"Preventing invalid write on metadata (overlaps with {overlap})").ConfigureAwait(false);
    }
}
