using System.Runtime.CompilerServices;
using Strata.Images;
using Strata.Images.Bitmaps;
using Strata.Images.Format;
using Strata.Images.Qcow2;
using Strata.Img.Cli;

namespace Strata.Img.Commands;

/// <summary>
/// qemu-img bitmap (--add | --remove | --clear | --enable | --disable | --merge SOURCE)... [-g granularity]
/// [-b source_file [-F source_fmt]] [-f fmt] [--object ...] [--image-opts] filename bitmap.
/// The actions run in command-line order; a failed one stops the rest, but what went before is kept (stored at close).
/// </summary>
public static class BitmapCommand
{
    private const int OptObject = 256, OptImageOpts = 257, OptAdd = 258, OptRemove = 259, OptClear = 260,
        OptEnable = 261, OptDisable = 262, OptMerge = 263;

    private static readonly LongOption[] Longs =
    [
        new("help", ArgKind.None, 'h'),
        new("object", ArgKind.Required, OptObject),
        new("image-opts", ArgKind.None, OptImageOpts),
        new("add", ArgKind.None, OptAdd),
        new("remove", ArgKind.None, OptRemove),
        new("clear", ArgKind.None, OptClear),
        new("enable", ArgKind.None, OptEnable),
        new("disable", ArgKind.None, OptDisable),
        new("merge", ArgKind.Required, OptMerge),
        new("granularity", ArgKind.Required, 'g'),
        new("source-file", ArgKind.Required, 'b'),
        new("source-format", ArgKind.Required, 'F'),
    ];

    /// <summary>Registers the bitmap parts of info and measure (the hooks those commands expose).</summary>
    [ModuleInitializer]
    internal static void Register()
    {
        ImageInfo.Extensions.Add(AddInfoAsync);
        MeasureCommand.BitmapsSize = (img, clusterSize, _) =>
            ValueTask.FromResult(img is Qcow2Image q ? q.PersistentBitmapsSize(clusterSize) : 0L);
    }

    public static async Task<int> RunAsync(string[] args)
    {
        string? fmt = null, srcFile = null, srcFmt = null;
        long granularity = 0;
        bool add = false, merge = false;
        var actions = new List<(int Act, string? Source)>();
        var (opts, pos) = GetOpt.Parse(args, ":b:f:F:g:h", Longs);
        foreach (var o in opts)
        {
            switch (o.Id)
            {
                case 'h': return Help.Show();
                case 'b': srcFile = o.Value; break;
                case 'f': fmt = o.Value; break;
                case 'F': srcFmt = o.Value; break;
                case 'g': granularity = Sizes.CvtNum("granularity", o.Value!); break;
                case OptAdd: actions.Add((OptAdd, null)); add = true; break;
                case OptRemove: actions.Add((OptRemove, null)); break;
                case OptClear: actions.Add((OptClear, null)); break;
                case OptEnable: actions.Add((OptEnable, null)); break;
                case OptDisable: actions.Add((OptDisable, null)); break;
                case OptMerge: actions.Add((OptMerge, o.Value)); merge = true; break;
                case OptObject: break;
                case OptImageOpts: throw Io.Fail("--image-opts is not supported");
            }
        }
        if (actions.Count == 0)
            throw Io.Fail("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge");
        if (granularity != 0 && !add)
            throw Io.Fail("granularity only supported with --add");
        if (srcFmt != null && srcFile == null)
            throw Io.Fail("-F only supported with -b");
        if (srcFile != null && !merge)
            throw Io.Fail("Merge bitmap source file only supported with --merge");
        if (pos.Count != 2)
            throw Io.Fail("Expecting filename and bitmap name");
        string filename = pos[0], name = pos[1];

        await using var img = await ImageOpen.OpenAsync(filename, fmt, writable: true);
        IImage? src = null;
        try
        {
            if (srcFile != null)
                src = await ImageOpen.OpenAsync(srcFile, srcFmt);
            foreach (var (act, source) in actions)
            {
                string op = act switch
                {
                    OptAdd => "add", OptRemove => "remove", OptClear => "clear",
                    OptEnable => "enable", OptDisable => "disable", _ => "merge",
                };
                try
                {
                    await ApplyAsync(img, act, name, granularity, src ?? img, source);
                }
                catch (BitmapException e)
                {
                    Io.Error($"Operation {op} on bitmap {name} failed: {e.Message}", e.Hint);
                    return 1;
                }
                catch (Exception e) when (e is ImageException or IOException)
                {
                    Io.Error($"Operation {op} on bitmap {name} failed: {ImageOpen.Describe(e, filename)}");
                    return 1;
                }
            }
        }
        finally
        {
            if (src != null)
                await src.DisposeAsync();
        }
        return 0;
    }

    private static async ValueTask ApplyAsync(IImage img, int act, string name, long granularity, IImage src, string? srcName)
    {
        var q = img as Qcow2Image;
        DirtyBitmap Lookup() => q?.DirtyBitmaps.Lookup(name) ?? throw new BitmapException($"Dirty bitmap '{name}' not found");
        switch (act)
        {
            case OptAdd:
                if (q == null)
                {
                    if (string.IsNullOrEmpty(name))
                        throw new BitmapException("Bitmap name cannot be empty");
                    // No other format can store bitmaps; the auto node name stands in for QEMU's.
                    throw new BitmapException("Can't store persistent bitmaps to #block100: Operation not supported");
                }
                // QMP's granularity is 32 bits wide: larger values wrap, as in qemu-img.
                await q.AddDirtyBitmapAsync(name, granularity != 0 ? (uint)granularity : null, persistent: true);
                break;
            case OptRemove:
                Lookup();
                await q!.RemoveDirtyBitmapAsync(name);
                break;
            case OptClear:
                DirtyBitmapSet.ClearBits(Lookup());
                break;
            case OptEnable:
                q!.DirtyBitmaps.SetEnabled(Lookup(), true);
                break;
            case OptDisable:
                q!.DirtyBitmaps.SetEnabled(Lookup(), false);
                break;
            case OptMerge:
                var target = Lookup();
                var source = (src as Qcow2Image)?.DirtyBitmaps.Find(srcName!) ?? throw new BitmapException($"Dirty bitmap '{srcName}' not found");
                DirtyBitmapSet.Merge(target, source);
                break;
        }
    }

    /// <summary>The format-specific "bitmaps" list of info: the directory as on disk, QEMU's flag names.</summary>
    private static async ValueTask AddInfoAsync(IImage img, ImageInfo info, CancellationToken ct)
    {
        if (img is not Qcow2Image q || q.Header.Version < 3 || info.FormatSpecific?.Get("data") is not QDict data)
            return;
        var entries = await q.ReadBitmapDirectoryAsync(ct);
        if (entries.Count == 0)
            return;
        var list = new QList();
        foreach (var e in entries)
        {
            var flags = new QList();
            foreach (var f in e.FlagNames())
                flags.Add(f);
            list.Add(new QDict().Put("flags", flags).Put("name", e.Name).Put("granularity", (long)e.Granularity));
        }
        data.Put("bitmaps", list);
    }

    /// <summary>convert_check_bitmaps: the source must hold bitmaps and none may be inconsistent (unless skipped).</summary>
    internal static bool CheckConvertSource(IImage src, bool skipBroken)
    {
        if (src is not Qcow2Image { Header.Version: >= 3 } q)
        {
            Io.Error("Source lacks bitmap support");
            return false;
        }
        foreach (var b in q.DirtyBitmaps.All)
        {
            if (b.Persistent && !skipBroken && b.Inconsistent)
            {
                Io.Error($"Cannot copy inconsistent bitmap '{b.Name}'");
                Io.ErrorRaw("Try --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it\n");
                return false;
            }
        }
        return true;
    }

    /// <summary>convert_copy_bitmaps: each persistent bitmap of the source, same granularity and state, same bits.</summary>
    internal static async ValueTask<bool> CopyForConvertAsync(IImage src, Qcow2Image dst, bool skipBroken)
    {
        var q = (Qcow2Image)src;
        foreach (var b in q.DirtyBitmaps.All)
        {
            if (!b.Persistent)
                continue;
            if (skipBroken && b.Inconsistent)
            {
                Io.Warn($"Skipping inconsistent bitmap '{b.Name}'");
                continue;
            }
            DirtyBitmap added;
            try
            {
                added = await dst.AddDirtyBitmapAsync(b.Name!, b.Granularity, persistent: true, disabled: !b.Enabled);
            }
            catch (BitmapException e)
            {
                Io.Error($"Failed to create bitmap {b.Name}: {e.Message}");
                return false;
            }
            try
            {
                DirtyBitmapSet.Merge(added, b);
            }
            catch (BitmapException e)
            {
                Io.Error($"Failed to populate bitmap {b.Name}: {e.Message}", e.Hint);
                await dst.RemoveDirtyBitmapAsync(b.Name!);
                return false;
            }
        }
        return true;
    }
}
