namespace Strata.Interop.Tests.Qcow2.Model;

/// <summary>
/// The guest view of one image of a chain, kept in memory, with the semantics QEMU 7.2 and the engine's
/// documentation give each operation:
/// write and write-zeroes change exactly their range; discard only drops whole clusters inside the range
/// (plus a last partial cluster that ends at the disk end); partial clusters keep their data. Dropped clusters
/// read as zero in v3 images. In v2 images they read as zero without a backing file; with one, QEMU 7.2 and
/// Strata refuse such discards (qcow2_co_pdiscard: "discarding clusters could expose stale data from the
/// backing file"), so the data stays.
/// </summary>
public sealed class DiskModel
{
    public DiskModel(ImageConfig config, byte[]? below)
    {
        Config = config;
        HasBacking = below != null;
        View = new byte[config.Size];
        Below = new byte[config.Size];
        if (below != null)
        {
            below.AsSpan(0, (int)Math.Min(below.Length, config.Size)).CopyTo(Below);
            Below.CopyTo(View, 0);
        }
    }

    public ImageConfig Config { get; }

    public bool HasBacking { get; }

    /// <summary>What the guest reads.</summary>
    public byte[] View { get; }

    /// <summary>What the backing chain shows (zero-extended or cut to this image's size).</summary>
    public byte[] Below { get; }

    public void Apply(Op op)
    {
        switch (op.Kind)
        {
            case OpKind.Write:
            case OpKind.WriteCompressed:
                op.MakeData().CopyTo(View, op.Offset);
                break;
            case OpKind.Zero:
                View.AsSpan((int)op.Offset, (int)op.Length).Clear();
                break;
            case OpKind.Discard:
            {
                if (!Config.IsQcow2)
                    throw new InvalidOperationException("the model does not discard on raw images");
                var (s, e) = DiscardedRange(op.Offset, op.Length, Config.ClusterSize, Config.Size);
                if (s >= e || (Config.Version < 3 && HasBacking))
                    break;
                View.AsSpan((int)s, (int)(e - s)).Clear();
                break;
            }
            default:
                break;
        }
    }

    /// <summary>The bytes a discard really drops: whole clusters, and a partial last cluster ending at the disk end.</summary>
    public static (long Start, long End) DiscardedRange(long offset, long length, int clusterSize, long size)
    {
        long start = (offset + clusterSize - 1) / clusterSize * clusterSize;
        long end = offset + length == size ? size : (offset + length) / clusterSize * clusterSize;
        return start < end ? (start, end) : (0, 0);
    }

    /// <summary>Null when equal, else where and how the first run of differing bytes differs.</summary>
    public static string? Compare(ReadOnlySpan<byte> expected, ReadOnlySpan<byte> actual, long baseOffset, int clusterSize)
    {
        if (expected.Length != actual.Length)
            return $"length differs: expected {expected.Length} bytes, got {actual.Length}";
        int i = expected.CommonPrefixLength(actual);
        if (i == expected.Length)
            return null;
        int j = i;
        while (j < expected.Length && expected[j] != actual[j])
            j++;
        int total = 0;
        for (int k = i; k < expected.Length; k++)
            if (expected[k] != actual[k])
                total++;
        long at = baseOffset + i;
        string Sample(ReadOnlySpan<byte> s) => Convert.ToHexString(s.Slice(i, Math.Min(16, s.Length - i))).ToLowerInvariant();
        return $"first difference at guest offset {at} (0x{at:x}, cluster {at / clusterSize} +0x{at % clusterSize:x}): " +
               $"expected {Sample(expected)}…, got {Sample(actual)}…; the run of differing bytes is {j - i} long, {total} bytes differ in all";
    }
}
