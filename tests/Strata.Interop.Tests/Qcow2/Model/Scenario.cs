using System.Text;

namespace Strata.Interop.Tests.Qcow2.Model;

/// <summary>Who applies the top image's operations.</summary>
public enum ScenarioMode
{
    /// <summary>Strata applies every op to the top image (lower layers by either).</summary>
    Strata,
    /// <summary>qemu-io applies every op; Strata only reads.</summary>
    Qemu,
    /// <summary>Runs of ops alternate between qemu-io and Strata on the same image.</summary>
    Mixed,
}

/// <summary>One image of the chain: how it is created and what is done to it (bottom first; the last one is the top).</summary>
public sealed record LayerPlan(ImageConfig Config, bool CreatedByStrata, IReadOnlyList<Op> Ops);

/// <summary>
/// A whole differential test case: a backing chain and the op sequence applied to each image. With
/// <see cref="SmallCaches"/> Strata opens images with the smallest L2 and refcount caches (two tables each), so
/// tables are evicted and written back all the time.
/// </summary>
public sealed record Scenario(int Seed, ScenarioMode Mode, IReadOnlyList<LayerPlan> Layers, bool SmallCaches = false)
{
    public LayerPlan Top => Layers[^1];

    public static string FileName(int layer, int count, ImageConfig c) =>
        layer == count - 1 ? "top.qcow2" : $"L{layer}.{(c.IsQcow2 ? "qcow2" : "raw")}";

    public string Describe()
    {
        var sb = new StringBuilder();
        sb.AppendLine($"seed {Seed}, mode {Mode}, {Layers.Count - 1} backing layer(s), {Top.Ops.Count} top ops{(SmallCaches ? ", Strata opens with the smallest caches (L2CacheSize = RefcountCacheSize = 2 clusters)" : "")}");
        for (int i = 0; i < Layers.Count; i++)
        {
            var l = Layers[i];
            string name = FileName(i, Layers.Count, l.Config);
            sb.Append($"  {name}: {l.Config}, created by {(l.CreatedByStrata ? "Strata (Qcow2Creator)" : "qemu-img create")}");
            if (i > 0)
                sb.Append($", backing {FileName(i - 1, Layers.Count, Layers[i - 1].Config)} ({Layers[i - 1].Config.Format})");
            sb.AppendLine($", {l.Ops.Count} ops:");
            for (int k = 0; k < l.Ops.Count; k++)
                sb.AppendLine($"    #{k,-2} {l.Ops[k]}");
        }
        return sb.ToString();
    }
}

/// <summary>Random operations for one image, biased toward cluster and subcluster edges and toward earlier ops' ranges.</summary>
public sealed class OpGenerator(Random r, ImageConfig c)
{
    private readonly List<long> _recent = [];
    private readonly HashSet<long> _touchedClusters = [];

    private long Size => c.Size;
    private int Unit => c.DiscardUnit;

    public Op Next(Applier by, bool lower)
    {
        int k = r.Next(100);
        if (lower)
        {
            if (!c.IsQcow2)
                return k < 80 ? Write(by) : Zero(by);
            if (by == Applier.Qemu && k < 15)
                return Compressed(by) ?? Write(by);
            return k < 70 ? Write(by) : k < 85 ? Zero(by) : Discard(by);
        }
        if (by == Applier.Strata)
        {
            return k switch
            {
                < 45 => Write(by),
                < 63 => Zero(by),
                < 78 => Discard(by),
                < 90 => Range(OpKind.Read, by),
                < 95 => new Op(OpKind.Flush, By: by),
                _ => new Op(OpKind.Reopen, By: by),
            };
        }
        return k switch
        {
            < 8 => Compressed(by) ?? Write(by),
            < 50 => Write(by),
            < 72 => Zero(by),
            < 92 => Discard(by),
            < 97 => new Op(OpKind.Flush, By: by),
            _ => new Op(OpKind.Reopen, By: by),
        };
    }

    private Op Write(Applier by)
    {
        var op = Range(OpKind.Write, by);
        int pattern = r.Next(2) == 0 ? -1 : r.Next(20) == 0 ? 0 : r.Next(1, 256);
        return op with { Pattern = pattern, DataSeed = pattern < 0 ? r.Next() : 0, Fua = r.Next(10) == 0 };
    }

    private Op Zero(Applier by) => Range(OpKind.Zero, by) with { MayUnmap = r.Next(2) == 0, Fua = r.Next(10) == 0 };

    private Op Discard(Applier by) => Range(OpKind.Discard, by);

    /// <summary>A compressed cluster write, only where this layer never wrote (QEMU refuses to compress over allocated clusters).</summary>
    private Op? Compressed(Applier by)
    {
        int cs = c.ClusterSize;
        long clusters = (Size + cs - 1) / cs;
        for (int attempt = 0; attempt < 10; attempt++)
        {
            long idx = _recent.Count > 0 && r.Next(2) == 0
                ? Math.Clamp(_recent[r.Next(_recent.Count)] / cs + r.Next(-2, 3), 0, clusters - 1)
                : r.NextInt64(clusters);
            if (_touchedClusters.Contains(idx))
                continue;
            long off = idx * cs;
            long len = Math.Min(cs, Size - off);
            int pattern = r.Next(2) == 0 ? -1 : r.Next(1, 256);
            Remember(off, len);
            return new Op(OpKind.WriteCompressed, off, len, pattern, pattern < 0 ? r.Next() : 0, By: by);
        }
        return null;
    }

    private Op Range(OpKind kind, Applier by)
    {
        long off = Offset();
        long len = Length(off);
        if (kind != OpKind.Read)
            Remember(off, len);
        return new Op(kind, off, len, By: by);
    }

    private void Remember(long off, long len)
    {
        _recent.Add(off);
        _recent.Add(off + len);
        for (long cl = off / Unit; cl <= (off + len - 1) / Unit; cl++)
            _touchedClusters.Add(cl);
    }

    private long Offset()
    {
        int cs = Unit, g = c.Granularity;
        int k = r.Next(100);
        long off;
        if (_recent.Count > 0 && k < 35)
        {
            off = _recent[r.Next(_recent.Count)] + r.NextInt64(-2L * cs, 2L * cs + 1);
            if (r.Next(2) == 0)
                off = off / g * g;
        }
        else if (k < 50)
            off = r.NextInt64(Size / cs + 1) * cs;
        else if (k < 62)
            off = r.NextInt64(Size / cs + 1) * cs + r.Next(-1024, 1025);
        else if (k < 72)
            off = r.NextInt64(Size / g + 1) * g + (r.Next(3) == 0 ? r.Next(-600, 601) : 0);
        else if (k < 85)
            off = r.NextInt64(Size / 512) * 512;
        else
            off = r.NextInt64(Size);
        return Math.Clamp(off, 0, Size - 1);
    }

    private long Length(long off)
    {
        int cs = Unit, g = c.Granularity;
        int k = r.Next(100);
        long len = k switch
        {
            < 22 => r.Next(1, 4097),
            < 40 => (long)cs * r.Next(1, 4) + r.Next(-512, 513),
            < 58 => r.NextInt64(1, 2L * cs + 1),
            < 70 => (long)g * r.Next(1, 40) + (r.Next(3) == 0 ? r.Next(-100, 101) : 0),
            < 88 => r.NextInt64(1, (1 << 20) + 1),
            _ => r.NextInt64(1, (4 << 20) + 1),
        };
        if (r.Next(25) == 0)
            len = Size - off; // to the end of the disk
        return Math.Clamp(len, 1, Math.Min(Size - off, 6 << 20));
    }
}

public static class ScenarioGenerator
{
    public static Scenario Generate(int seed, ScenarioMode mode)
    {
        var r = new Random(seed);
        // The cluster size and the chain depth are spread over consecutive seeds; the rest is random.
        uint u = (uint)seed;
        int topCluster = ImageConfig.ClusterSizes[u % 4];
        int depth = (u / 4 % 7) switch { 0 or 1 => 0, 2 or 3 => 1, 4 or 5 => 2, _ => 3 };
        long topSize = ImageConfig.RandomSize(r);

        var layers = new List<LayerPlan>();
        for (int i = 0; i < depth; i++)
        {
            long size = r.Next(10) < 7 ? topSize : ImageConfig.RandomSize(r);
            bool raw = i == 0 && r.Next(6) == 0;
            var cfg = raw ? new ImageConfig("raw", size) : ImageConfig.RandomQcow2(r, size, ImageConfig.ClusterSizes[r.Next(4)]);
            var by = r.Next(10) < 6 ? Applier.Qemu : Applier.Strata;
            bool createdByStrata = cfg.IsQcow2 && r.Next(2) == 0;
            var gen = new OpGenerator(r, cfg);
            int n = r.Next(1, 9);
            var ops = new List<Op>();
            for (int k = 0; k < n; k++)
                ops.Add(gen.Next(by, lower: true));
            layers.Add(new LayerPlan(cfg, createdByStrata, ops));
        }

        var top = ImageConfig.RandomQcow2(r, topSize, topCluster);
        bool smallCaches = r.Next(4) == 0;
        bool topByStrata = mode switch
        {
            ScenarioMode.Strata => r.Next(3) != 0,
            ScenarioMode.Qemu => false,
            _ => r.Next(2) == 0,
        };
        var topGen = new OpGenerator(r, top);
        int count = r.Next(5, 31);
        var topOps = new List<Op>();
        var current = mode == ScenarioMode.Qemu ? Applier.Qemu : mode == ScenarioMode.Strata ? Applier.Strata : (Applier)r.Next(2);
        int runLeft = r.Next(1, 7);
        for (int k = 0; k < count; k++)
        {
            if (mode == ScenarioMode.Mixed && runLeft-- == 0)
            {
                current = current == Applier.Qemu ? Applier.Strata : Applier.Qemu;
                runLeft = r.Next(1, 7) - 1;
            }
            topOps.Add(topGen.Next(current, lower: false));
        }
        layers.Add(new LayerPlan(top, topByStrata, topOps));
        return new Scenario(seed, mode, layers, smallCaches);
    }
}
