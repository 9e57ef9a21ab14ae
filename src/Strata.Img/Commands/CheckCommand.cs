using System.Globalization;
using System.Text;
using Strata.Images;
using Strata.Images.Qcow2;
using Strata.Img.Cli;

namespace Strata.Img.Commands;

/// <summary>qemu-img check [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-T src_cache] [-U] filename</summary>
public static class CheckCommand
{
    private const int OptOutput = 256, OptObject = 257, OptImageOpts = 258;

    private static readonly LongOption[] Longs =
    [
        new("help", ArgKind.None, 'h'),
        new("format", ArgKind.Required, 'f'),
        new("repair", ArgKind.Required, 'r'),
        new("output", ArgKind.Required, OptOutput),
        new("object", ArgKind.Required, OptObject),
        new("image-opts", ArgKind.None, OptImageOpts),
        new("force-share", ArgKind.None, 'U'),
    ];

    public static async Task<int> RunAsync(string[] args)
    {
        string? fmt = null, output = null;
        bool quiet = false, forceShare = false;
        var mode = Qcow2RepairMode.None;
        var (opts, pos) = GetOpt.Parse(args, ":hf:r:T:qU", Longs);
        foreach (var o in opts)
        {
            switch (o.Id)
            {
                case 'h': return Help.Show();
                case 'f': fmt = o.Value; break;
                case 'r':
                    mode = o.Value switch
                    {
                        "leaks" => Qcow2RepairMode.Leaks,
                        "all" => Qcow2RepairMode.All,
                        _ => throw Io.ErrorExit($"Unknown option value for -r (expecting 'leaks' or 'all'): {o.Value}"),
                    };
                    break;
                case OptOutput: output = o.Value; break;
                case 'T': break;
                case 'q': quiet = true; break;
                case 'U': forceShare = true; break;
                default: throw Io.ErrorExit($"option not supported: {o.Text}");
            }
        }
        if (pos.Count != 1)
            throw Io.ErrorExit("Expecting one image file name");
        string filename = pos[0];
        bool json = Io.ParseOutputFormat(output);

        await using var img = await ImageOpen.OpenAsync(filename, fmt, writable: mode != Qcow2RepairMode.None, forCheck: true, forceShare: forceShare);
        if (img is not Qcow2Image q)
        {
            Io.Error("This image format does not support checks");
            return 63;
        }

        Qcow2CheckResult r;
        try
        {
            r = await Qcow2Check.CheckAsync(q, mode, line => Io.ErrorRaw(line + "\n"));
            if (r.Failure == null && r.AnythingFixed)
            {
                if (!json)
                    Io.Print(quiet, $"The following inconsistencies were found and repaired:\n\n    {r.LeaksFixed} leaked clusters\n    {r.CorruptionsFixed} corruptions\n\nDouble checking the fixed image now...\n");
                var again = await Qcow2Check.CheckAsync(q, Qcow2RepairMode.None, line => Io.ErrorRaw(line + "\n"));
                r = again with { LeaksFixed = r.LeaksFixed, CorruptionsFixed = r.CorruptionsFixed };
            }
        }
        catch (ImageException e)
        {
            Io.Error($"Check failed: {e.Message}");
            return 1;
        }

        if (r.Failure == null)
        {
            if (json)
                Io.Print(quiet, QJson.ToPrettyJson(ToQDict(r, filename, img.FormatName)) + "\n");
            else
                Io.Print(quiet, Human(r));
        }
        if (r.Failure != null || r.CheckErrors > 0)
        {
            Io.Error(r.Failure != null ? $"Check failed: {r.Failure}" : "Check failed");
            return 1;
        }
        return r.Corruptions > 0 ? 2 : r.Leaks > 0 ? 3 : 0;
    }

    /// <summary>qemu-img's dump_human_image_check.</summary>
    public static string Human(Qcow2CheckResult c)
    {
        var sb = new StringBuilder();
        var inv = CultureInfo.InvariantCulture;
        if (c.Corruptions == 0 && c.Leaks == 0 && c.CheckErrors == 0)
            sb.Append("No errors were found on the image.\n");
        else
        {
            if (c.Corruptions != 0)
                sb.Append(inv, $"\n{c.Corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n");
            if (c.Leaks != 0)
                sb.Append(inv, $"\n{c.Leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n");
            if (c.CheckErrors != 0)
                sb.Append(inv, $"\n{c.CheckErrors} internal errors have occurred during the check.\n");
        }
        if (c.TotalClusters != 0 && c.AllocatedClusters != 0)
        {
            sb.Append(inv, $"{c.AllocatedClusters}/{c.TotalClusters} = {Sizes.F2(c.AllocatedClusters * 100.0 / c.TotalClusters)}% allocated, ");
            sb.Append(inv, $"{Sizes.F2(c.FragmentedClusters * 100.0 / c.AllocatedClusters)}% fragmented, {Sizes.F2(c.CompressedClusters * 100.0 / c.AllocatedClusters)}% compressed clusters\n");
        }
        if (c.ImageEndOffset != 0)
            sb.Append(inv, $"Image end offset: {c.ImageEndOffset}\n");
        return sb.ToString();
    }

    /// <summary>QAPI ImageCheck (optional members only when non-zero, as collect_image_check sets them).</summary>
    public static QDict ToQDict(Qcow2CheckResult c, string filename, string format)
    {
        var d = new QDict();
        d.Put("filename", filename);
        d.Put("format", format);
        d.Put("check-errors", c.CheckErrors);
        PutNonZero("image-end-offset", c.ImageEndOffset);
        PutNonZero("corruptions", c.Corruptions);
        PutNonZero("leaks", c.Leaks);
        PutNonZero("corruptions-fixed", c.CorruptionsFixed);
        PutNonZero("leaks-fixed", c.LeaksFixed);
        PutNonZero("total-clusters", c.TotalClusters);
        PutNonZero("allocated-clusters", c.AllocatedClusters);
        PutNonZero("fragmented-clusters", c.FragmentedClusters);
        PutNonZero("compressed-clusters", c.CompressedClusters);
        return d;

        void PutNonZero(string key, long value)
        {
            if (value != 0)
                d.Put(key, value);
        }
    }
}
