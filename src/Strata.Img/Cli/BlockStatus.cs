using System.Buffers.Binary;
using Strata.Images.Format;
using Strata.Images.Qcow2;

namespace Strata.Img.Cli;

/// <summary>QEMU's BDRV_BLOCK_* flags.</summary>
[Flags]
public enum BdrvStatus
{
    None = 0,
    Data = 1,
    Zero = 2,
    OffsetValid = 4,
    Allocated = 0x10,
    Eof = 0x20,
    Recurse = 0x40,
}

/// <summary>One layer's answer: flags, length, host offset (with <see cref="BdrvStatus.OffsetValid"/>) and the file holding it.</summary>
public readonly record struct LayerStatus(BdrvStatus Flags, long Length, long Map, int Depth);

/// <summary>
/// Block status of a backing chain as QEMU 7.2 computes it (bdrv_co_block_status for qcow2 and raw over file-posix,
/// and the chain walk of qemu-img map / bdrv_block_status_above): zero for unallocated ranges without backing or past
/// the backing file's end, metadata-preallocation detection with a look at the host file's holes, extended-L2
/// clusters that are allocated on the host but not in the guest.
/// </summary>
public sealed class ChainStatus
{
    private readonly List<(IImage Image, string Name)> _layers = [];
    private readonly Dictionary<int, RawL2Reader> _l2Readers = [];

    public ChainStatus(IImage top, string topName)
    {
        IImage? img = top;
        string name = topName;
        while (img != null)
        {
            _layers.Add((img, name));
            if (img.BackingFileName is { } b)
                name = BackingPath.Resolve(name, b);
            img = img.Backing;
        }
    }

    public IReadOnlyList<(IImage Image, string Name)> Layers => _layers;

    /// <summary>bdrv_co_block_status of one layer (want_zero = true).</summary>
    public async ValueTask<LayerStatus> LayerAsync(int depth, long offset, long bytes, CancellationToken ct = default)
    {
        var img = _layers[depth].Image;
        long size = ImageIo.VirtualSize(img);
        if (offset >= size)
            return new LayerStatus(BdrvStatus.Eof, 0, 0, depth);
        if (bytes == 0)
            return new LayerStatus(BdrvStatus.None, 0, 0, depth);
        bytes = Math.Min(bytes, size - offset);

        BdrvStatus ret;
        long pnum, map = 0;
        if (img is Qcow2Image q)
        {
            (ret, pnum, map) = await Qcow2StatusAsync(depth, q, offset, Math.Min(bytes, int.MaxValue), ct);
            if ((ret & (BdrvStatus.Data | BdrvStatus.Zero)) != 0)
                ret |= BdrvStatus.Allocated;
            else if (img.Backing == null)
                ret |= BdrvStatus.Zero;
            else if (offset >= ImageIo.VirtualSize(img.Backing))
                ret |= BdrvStatus.Zero;

            if ((ret & BdrvStatus.Recurse) != 0 && (ret & BdrvStatus.Data) != 0 && (ret & BdrvStatus.Zero) == 0 && (ret & BdrvStatus.OffsetValid) != 0)
            {
                // Look at the host file: holes in preallocated clusters read as zeroes.
                var file = img.Storage;
                long flen = file.Length;
                if (map >= flen)
                    ret |= BdrvStatus.Zero;
                else
                {
                    long req = Math.Min(pnum, flen - map);
                    var ext = await file.GetExtentAsync(map, req, ct);
                    long fpnum = Math.Max(1, Math.Min(ext.Length, req));
                    bool eof = map + fpnum == flen;
                    if (eof && !ext.IsData)
                        ret |= BdrvStatus.Zero;
                    else
                    {
                        pnum = fpnum;
                        if (!ext.IsData)
                            ret |= BdrvStatus.Zero;
                    }
                }
            }
            ret &= ~BdrvStatus.Recurse;
        }
        else
        {
            // raw over a file: the file's data and holes, at the same offsets (a partial last sector reads as zero).
            map = offset;
            if (offset >= img.Size)
            {
                pnum = bytes;
                ret = BdrvStatus.OffsetValid | BdrvStatus.Allocated | BdrvStatus.Zero;
            }
            else
            {
                var st = await img.GetBlockStatusAsync(offset, Math.Min(bytes, img.Size - offset), ct);
                pnum = st.Length;
                if (st.State != BlockState.Data && offset + pnum == img.Size)
                    pnum = bytes; // trailing hole
                ret = BdrvStatus.OffsetValid | BdrvStatus.Allocated | (st.State == BlockState.Data ? BdrvStatus.Data : BdrvStatus.Zero);
            }
        }
        if (offset + pnum == size)
            ret |= BdrvStatus.Eof;
        return new LayerStatus(ret, pnum, map, depth);
    }

    private async ValueTask<(BdrvStatus, long, long)> Qcow2StatusAsync(int depth, Qcow2Image q, long offset, long bytes, CancellationToken ct)
    {
        bool prealloc = await q.IsMetadataPreallocatedAsync(ct);
        if (q.Header.ExtendedL2)
        {
            // Extended L2 entries are read here, from the (unmodified, read-only) file, as qcow2_get_host_offset does.
            if (!_l2Readers.TryGetValue(depth, out var reader))
                _l2Readers[depth] = reader = new RawL2Reader(q);
            var (type, host, len) = await reader.StatusAsync(offset, bytes, ct);
            var flags = type switch
            {
                SubclusterType.Normal => BdrvStatus.Data | BdrvStatus.OffsetValid | (prealloc ? BdrvStatus.Recurse : 0),
                SubclusterType.ZeroAlloc => BdrvStatus.Zero | BdrvStatus.OffsetValid,
                SubclusterType.ZeroPlain => BdrvStatus.Zero,
                SubclusterType.UnallocatedAlloc => BdrvStatus.OffsetValid,
                SubclusterType.Compressed => BdrvStatus.Data,
                _ => BdrvStatus.None,
            };
            return (flags, len, (flags & BdrvStatus.OffsetValid) != 0 ? host : 0);
        }
        var st = await q.GetBlockStatusAsync(offset, bytes, ct);
        long cs = q.ClusterSize;
        long toClusterEnd = cs - (offset & (cs - 1));
        BdrvStatus ret;
        long pnum = st.Length, map = 0;
        switch (st.State)
        {
            case BlockState.Data when !st.Compressed && st.HostOffset is { } h:
                ret = BdrvStatus.Data | BdrvStatus.OffsetValid;
                map = h;
                if (prealloc)
                    ret |= BdrvStatus.Recurse;
                break;
            case BlockState.Data:
                ret = BdrvStatus.Data;
                break;
            case BlockState.Zero when st.HostOffset is { } h:
                // Preallocated zero clusters: host offsets need not be contiguous; one cluster at a time.
                ret = BdrvStatus.Zero | BdrvStatus.OffsetValid;
                map = h;
                pnum = Math.Min(pnum, toClusterEnd);
                break;
            case BlockState.Zero:
                ret = BdrvStatus.Zero;
                break;
            default:
                ret = BdrvStatus.None;
                break;
        }
        return (ret, pnum, map);
    }

    private enum SubclusterType { UnallocatedPlain, UnallocatedAlloc, ZeroPlain, ZeroAlloc, Normal, Compressed }

    /// <summary>Reads extended L1/L2 entries straight from an (unmodified, read-only) image file.</summary>
    private sealed class RawL2Reader(Qcow2Image q)
    {
        private long _cachedOffset = -1;
        private readonly byte[] _l2 = new byte[q.ClusterSize];

        private static SubclusterType TypeOf(ulong entry, ulong bitmap, int sc)
        {
            if ((entry & (1UL << 62)) != 0)
                return SubclusterType.Compressed;
            bool hasHost = (entry & 0x00FFFFFFFFFFFE00UL) != 0;
            if (hasHost)
            {
                if (((bitmap >> 32) & bitmap) != 0)
                    throw new Strata.Images.CorruptImageException("Invalid subcluster bitmap");
                if ((bitmap & (1UL << (32 + sc))) != 0)
                    return SubclusterType.ZeroAlloc;
                return (bitmap & (1UL << sc)) != 0 ? SubclusterType.Normal : SubclusterType.UnallocatedAlloc;
            }
            if ((bitmap & 0xFFFFFFFFUL) != 0)
                throw new Strata.Images.CorruptImageException("Invalid subcluster bitmap");
            return (bitmap & (1UL << (32 + sc))) != 0 ? SubclusterType.ZeroPlain : SubclusterType.UnallocatedPlain;
        }

        /// <summary>qcow2_get_subcluster_range_type: how many subclusters from <paramref name="sc"/> share the type.</summary>
        private static int RangeCount(SubclusterType t, ulong bitmap, int sc)
        {
            uint below = sc == 0 ? 0u : (uint)((1UL << sc) - 1);
            switch (t)
            {
                case SubclusterType.Compressed:
                    return 32 - sc;
                case SubclusterType.Normal:
                    return System.Numerics.BitOperations.TrailingZeroCount(~((uint)bitmap | below)) - sc;
                case SubclusterType.ZeroPlain or SubclusterType.ZeroAlloc:
                    return System.Numerics.BitOperations.TrailingZeroCount(~((uint)(bitmap >> 32) | below)) - sc;
                default:
                    uint v = ((uint)(bitmap >> 32) | (uint)bitmap) & ~below;
                    return (v == 0 ? 32 : System.Numerics.BitOperations.TrailingZeroCount(v)) - sc;
            }
        }

        public async ValueTask<(SubclusterType Type, long Host, long Length)> StatusAsync(long offset, long max, CancellationToken ct)
        {
            var h = q.Header;
            int cb = h.ClusterBits;
            long cs = h.ClusterSize;
            int scBits = cb - 5;
            int l2Bits = cb - 4; // 16-byte entries
            long tableSpan = 1L << (cb + l2Bits);
            long toTableEnd = tableSpan - (offset & (tableSpan - 1));
            long l1Index = offset >> (cb + l2Bits);
            if (l1Index >= h.L1Size)
                return (SubclusterType.UnallocatedPlain, 0, Math.Min(max, toTableEnd));
            var e = new byte[8];
            await q.Storage.ReadAsync(e, h.L1TableOffset + l1Index * 8, ct);
            long l2Off = (long)(BinaryPrimitives.ReadUInt64BigEndian(e) & 0x00FFFFFFFFFFFE00UL);
            if (l2Off == 0)
                return (SubclusterType.UnallocatedPlain, 0, Math.Min(max, toTableEnd));
            if (_cachedOffset != l2Off)
            {
                await q.Storage.ReadAsync(_l2, l2Off, ct);
                _cachedOffset = l2Off;
            }
            int idx = (int)((offset >> cb) & ((1L << l2Bits) - 1));
            long inCluster = offset & (cs - 1);
            int scFrom = (int)(inCluster >> scBits);
            int entries = 1 << l2Bits;
            long neededClusters = (inCluster + max + cs - 1) >> cb;
            SubclusterType first = SubclusterType.UnallocatedPlain;
            long firstHost = 0, expected = 0;
            bool checkOffset = false;
            long count = 0;
            for (long i = 0; i < neededClusters && idx + i < entries; i++)
            {
                int fsc = i == 0 ? scFrom : 0;
                ulong entry = BinaryPrimitives.ReadUInt64BigEndian(_l2.AsSpan((int)((idx + i) * 16)));
                ulong bitmap = BinaryPrimitives.ReadUInt64BigEndian(_l2.AsSpan((int)((idx + i) * 16 + 8)));
                var t = TypeOf(entry, bitmap, fsc);
                int n = RangeCount(t, bitmap, fsc);
                long host = (long)(entry & 0x00FFFFFFFFFFFE00UL);
                if (i == 0)
                {
                    if (t == SubclusterType.Compressed)
                        return (t, 0, Math.Min(max, cs - inCluster));
                    first = t;
                    firstHost = expected = host;
                    checkOffset = t is SubclusterType.Normal or SubclusterType.ZeroAlloc or SubclusterType.UnallocatedAlloc;
                }
                else if (t != first)
                    break;
                else if (checkOffset)
                {
                    expected += cs;
                    if (expected != host)
                        break;
                }
                count += n;
                if (fsc + n < 32)
                    break;
            }
            long bytes = ((long)scFrom + count << scBits) - inCluster;
            bool hasHost = first is SubclusterType.Normal or SubclusterType.ZeroAlloc or SubclusterType.UnallocatedAlloc;
            return (first, hasHost ? firstHost + inCluster : 0, Math.Min(bytes, max));
        }
    }

    /// <summary>qemu-img map's get_block_status: the first layer from the top that holds data or zeroes.</summary>
    public async ValueTask<MapEntry> MapStatusAsync(long offset, long bytes, CancellationToken ct = default)
    {
        int depth = 0;
        LayerStatus st;
        while (true)
        {
            st = await LayerAsync(depth, offset, bytes, ct);
            bytes = st.Length;
            if ((st.Flags & (BdrvStatus.Zero | BdrvStatus.Data)) != 0)
                break;
            if (depth + 1 >= _layers.Count)
            {
                st = st with { Flags = BdrvStatus.None };
                break;
            }
            depth++;
        }
        bool hasOffset = (st.Flags & BdrvStatus.OffsetValid) != 0;
        return new MapEntry(offset, bytes, depth, (st.Flags & BdrvStatus.Allocated) != 0, (st.Flags & BdrvStatus.Zero) != 0,
            (st.Flags & BdrvStatus.Data) != 0, hasOffset ? st.Map : null, hasOffset ? _layers[depth].Name : null);
    }

    /// <summary>bdrv_block_status_above(top, NULL): status of the whole chain (allocation from any layer).</summary>
    public async ValueTask<LayerStatus> AboveAsync(long offset, long bytes, CancellationToken ct = default)
    {
        var st = await LayerAsync(0, offset, bytes, ct);
        if (st.Length == 0 || (st.Flags & BdrvStatus.Allocated) != 0)
            return st;
        long eof = (st.Flags & BdrvStatus.Eof) != 0 ? offset + st.Length : -1;
        bytes = st.Length;
        for (int d = 1; d < _layers.Count; d++)
        {
            var s = await LayerAsync(d, offset, bytes, ct);
            if (s.Length == 0)
            {
                st = new LayerStatus(BdrvStatus.Zero | BdrvStatus.Allocated, bytes, 0, d);
                break;
            }
            st = s;
            if ((s.Flags & BdrvStatus.Allocated) != 0)
            {
                st = s with { Flags = s.Flags & ~BdrvStatus.Eof };
                break;
            }
            bytes = s.Length;
        }
        if (offset + st.Length == eof)
            st = st with { Flags = st.Flags | BdrvStatus.Eof };
        return st;
    }
}

/// <summary>qemu-img's MapEntry.</summary>
public record struct MapEntry(long Start, long Length, int Depth, bool Present, bool Zero, bool Data, long? Offset, string? Filename);
