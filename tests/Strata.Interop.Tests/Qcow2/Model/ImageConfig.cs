using System.Text;
using Strata.Images.Qcow2;

namespace Strata.Interop.Tests.Qcow2.Model;

/// <summary>How one image of a test chain is laid out: raw, or qcow2 with qemu-img's options.</summary>
public sealed record ImageConfig(
    string Format,
    long Size,
    int ClusterSize = 65536,
    int RefcountBits = 16,
    int Version = 3,
    bool ExtendedL2 = false,
    bool LazyRefcounts = false)
{
    public static readonly int[] ClusterSizes = [512, 4096, 65536, 2 << 20];

    public bool IsQcow2 => Format == "qcow2";

    /// <summary>The unit in which allocation (and so copy-on-write) happens.</summary>
    public int Granularity => !IsQcow2 ? 512 : ExtendedL2 ? ClusterSize / 32 : ClusterSize;

    /// <summary>Cluster size for discard rounding (qcow2), 512 for raw.</summary>
    public int DiscardUnit => IsQcow2 ? ClusterSize : 512;

    /// <summary>The -o string for qemu-img create (also understood by CreateMatchesQemuImgTests.ParseOptions).</summary>
    public string QemuOptions
    {
        get
        {
            if (!IsQcow2)
                return "";
            var sb = new StringBuilder();
            sb.Append("cluster_size=").Append(ClusterSize);
            sb.Append(",compat=").Append(Version == 2 ? "0.10" : "1.1");
            if (RefcountBits != 16)
                sb.Append(",refcount_bits=").Append(RefcountBits);
            if (ExtendedL2)
                sb.Append(",extended_l2=on");
            if (LazyRefcounts)
                sb.Append(",lazy_refcounts=on");
            return sb.ToString();
        }
    }

    public Qcow2CreateOptions ToCreateOptions(string? backingFile = null, string? backingFormat = null) =>
        CreateMatchesQemuImgTests.ParseOptions(QemuOptions) with
        {
            Size = Size,
            BackingFile = backingFile,
            BackingFormat = backingFile == null ? null : backingFormat,
        };

    public override string ToString() => IsQcow2 ? $"qcow2 size={Size} -o {QemuOptions}" : $"raw size={Size}";

    /// <summary>A random qcow2 configuration of the test matrix; the cluster size is given (the caller spreads it).</summary>
    public static ImageConfig RandomQcow2(Random r, long size, int clusterSize)
    {
        int version = r.Next(10) < 3 ? 2 : 3;
        int refcountBits = version == 2 ? 16 : new[] { 1, 16, 64 }[r.Next(3)];
        bool ext = version == 3 && clusterSize >= 16384 && r.Next(2) == 0;
        bool lazy = version == 3 && r.Next(8) == 0;
        return new ImageConfig("qcow2", size, clusterSize, refcountBits, version, ext, lazy);
    }

    /// <summary>4–64 MiB, mostly small, sometimes with a tail that is not a whole cluster.</summary>
    public static long RandomSize(Random r)
    {
        int k = r.Next(10);
        long mib = k < 5 ? 4 + r.Next(5) : k < 8 ? 8 + r.Next(9) : 16 + r.Next(49);
        long size = mib << 20;
        if (r.Next(4) == 0)
            size += 512L * r.Next(1, 4096);
        return size;
    }
}
