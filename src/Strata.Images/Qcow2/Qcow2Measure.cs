using System.Numerics;
using Strata.Images.Storage;

namespace Strata.Images.Qcow2;

/// <summary>The result of measuring: bytes a new image needs now, fully allocated, and for bitmaps (null = not reported).</summary>
public sealed record Qcow2MeasureResult(long Required, long FullyAllocated, long? Bitmaps);

/// <summary>
/// QEMU 7.2's qcow2_measure: how large a new qcow2 file will be, either for a given virtual size or for the data
/// of an existing image. The caller walks the source image's allocation (as <c>bdrv_block_status_above</c> does)
/// and feeds the data ranges to <see cref="AddData"/>; zero and unallocated ranges are skipped.
/// </summary>
public sealed class Qcow2Measure
{
    private const int L1EntrySize = 8;

    private readonly int _clusterSize;
    private readonly int _refcountOrder;
    private readonly bool _extendedL2;
    private long _requiredData;

    /// <summary>Checks the target options as qcow2_measure does (messages as QEMU's).</summary>
    public Qcow2Measure(int clusterSize, int refcountBits, bool extendedL2)
    {
        _clusterSize = clusterSize;
        _refcountOrder = BitOperations.Log2((uint)refcountBits);
        _extendedL2 = extendedL2;
    }

    public int ClusterSize => _clusterSize;

    /// <summary>Bytes of guest data counted so far (whole clusters).</summary>
    public long RequiredData => _requiredData;

    /// <summary>Throws when a disk of <paramref name="virtualSize"/> bytes needs a larger L1 table than qcow2 allows.</summary>
    public void CheckSize(long virtualSize)
    {
        long vs = RoundUp(virtualSize, _clusterSize);
        long l2e = _extendedL2 ? 16 : 8;
        long l2Tables = DivRoundUp(vs / _clusterSize, _clusterSize / l2e);
        if (l2Tables * L1EntrySize > 32L * 1024 * 1024)
            throw new ImageException("The image size is too large (try using a larger cluster size)");
    }

    /// <summary>
    /// Counts a data range found at <paramref name="offset"/> (<paramref name="length"/> bytes): whole clusters,
    /// as qcow2_measure does. Returns how far the walk should advance (to the end of the last touched cluster).
    /// </summary>
    public long AddData(long offset, long length)
    {
        long pnum = RoundUp(offset + length, _clusterSize) - offset;
        _requiredData += offset % _clusterSize + pnum;
        return pnum;
    }

    /// <summary>Counts <paramref name="bytes"/> as required data (backing files and full preallocation count everything).</summary>
    public void SetRequiredData(long bytes) => _requiredData = bytes;

    /// <summary>
    /// The measurement for a disk of <paramref name="virtualSize"/> bytes (rounded up to clusters);
    /// <paramref name="bitmaps"/> is reported as the bitmaps size when not null.
    /// </summary>
    public Qcow2MeasureResult Result(long virtualSize, Preallocation prealloc, long? bitmaps = null)
    {
        long vs = RoundUp(virtualSize, _clusterSize);
        long required = _requiredData;
        if (prealloc is Preallocation.Full or Preallocation.Falloc)
            required = vs;
        long full = FullyAllocatedSize(vs, _clusterSize, _refcountOrder, _extendedL2);
        return new Qcow2MeasureResult(full - vs + required, full, bitmaps);
    }

    /// <summary>QEMU's qcow2_calc_prealloc_size: header, L2 tables, L1 table, refcount structures and all data clusters.</summary>
    public static long FullyAllocatedSize(long totalSize, int clusterSize, int refcountOrder, bool extendedL2)
    {
        long meta = 0;
        long aligned = RoundUp(totalSize, clusterSize);
        long l2e = extendedL2 ? 16 : 8;
        meta += clusterSize; // header
        long nl2e = aligned / clusterSize;
        nl2e = RoundUp(nl2e, clusterSize / l2e);
        meta += nl2e * l2e;
        long nl1e = nl2e * l2e / clusterSize;
        nl1e = RoundUp(nl1e, clusterSize / L1EntrySize);
        meta += nl1e * L1EntrySize;
        meta += RefcountTable.MetadataSize((meta + aligned) / clusterSize, clusterSize, refcountOrder, false, out _);
        return meta + aligned;
    }

    /// <summary>QEMU's qcow2_get_persistent_dirty_bitmap_size contribution of one bitmap (bitmap data, table, directory entry).</summary>
    public static (long DataAndTable, long DirectoryEntry) BitmapSize(long diskSize, long granularity, int nameLength, int clusterSize)
    {
        long bits = DivRoundUp(diskSize, granularity);
        long bytes = DivRoundUp(bits, 8);
        long clusters = DivRoundUp(bytes, clusterSize);
        long size = clusters * clusterSize + RoundUp(clusters * 8, clusterSize);
        long dirEntry = (24 + nameLength + 7) & ~7L;
        return (size, dirEntry);
    }

    private static long RoundUp(long v, long a) => (v + a - 1) / a * a;
    private static long DivRoundUp(long v, long a) => (v + a - 1) / a;
}
