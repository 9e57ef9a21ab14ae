using System.Globalization;
using Strata.Images.Qcow2;

/// <summary>qemu-img -o style options for the images the crash writer creates.</summary>
internal static class CrashWriterOptions
{
    public static Qcow2CreateOptions Parse(string opts)
    {
        var o = new Qcow2CreateOptions();
        if (opts == "-")
            return o;
        foreach (var kv in opts.Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            var parts = kv.Split('=');
            string k = parts[0], v = parts[1];
            o = k switch
            {
                "compat" => o with { Version = v == "0.10" ? 2 : 3 },
                "cluster_size" => o with { ClusterSize = int.Parse(v, CultureInfo.InvariantCulture) },
                "refcount_bits" => o with { RefcountBits = int.Parse(v, CultureInfo.InvariantCulture) },
                "extended_l2" => o with { ExtendedL2 = v == "on" },
                "lazy_refcounts" => o with { LazyRefcounts = v == "on" },
                _ => throw new ArgumentException($"unknown option {k}"),
            };
        }
        return o;
    }
}
