using System.Globalization;
using System.Runtime.CompilerServices;
using System.Text;
using Strata.Images;
using Strata.Images.Format;
using Strata.Images.Qcow2;
using Strata.Img.Cli;

namespace Strata.Img.Commands;

/// <summary>
/// qemu-img snapshot [--object objectdef] [--image-opts] [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot] filename
/// (qemu-img 7.2's img_snapshot: no -f). Extensions: -C creates a snapshot with a unique time-based name, and -d also
/// accepts an ID and says which snapshot it removed.
/// </summary>
public static class SnapshotCommand
{
    private const int OptObject = 256, OptImageOpts = 257;

    private enum Action { None, List, Create, Apply, Delete }

    private static readonly LongOption[] Longs =
    [
        new("help", ArgKind.None, 'h'),
        new("object", ArgKind.Required, OptObject),
        new("image-opts", ArgKind.None, OptImageOpts),
        new("force-share", ArgKind.None, 'U'),
    ];

    /// <summary>Registers the snapshot list of qemu-img info (JSON and human).</summary>
    [ModuleInitializer]
    internal static void Register()
    {
        ImageInfo.Extensions.Add(AddSnapshotsAsync);
        ImageInfo.SnapshotDumper = DumpList;
    }

    public static async Task<int> RunAsync(string[] args)
    {
        var action = Action.None;
        string? name = null;
        bool quiet = false, forceShare = false, imageOpts = false, autoName = false;
        var (opts, pos) = GetOpt.Parse(args, ":la:c:d:hqUC", Longs);
        foreach (var o in opts)
        {
            switch (o.Id)
            {
                case 'h': return Help.Show();
                case 'l': SetAction(ref action, Action.List); break;
                case 'a': SetAction(ref action, Action.Apply); name = o.Value; break;
                case 'c': SetAction(ref action, Action.Create); name = o.Value; break;
                case 'C': SetAction(ref action, Action.Create); autoName = true; break;
                case 'd': SetAction(ref action, Action.Delete); name = o.Value; break;
                case 'q': quiet = true; break;
                case 'U': forceShare = true; break;
                case OptObject: break;
                case OptImageOpts: imageOpts = true; break;
            }
        }
        if (pos.Count != 1)
            throw Io.ErrorExit("Expecting one image file name");
        string filename = pos[0];
        string? fmt = null;
        if (imageOpts)
            (filename, fmt) = ParseImageOpts(filename);
        bool writable = action != Action.List;
        if (forceShare && writable)
            throw Io.Fail($"Could not open '{pos[0]}': force-share=on can only be used with read-only images");

        // qemu-img opens the image without its backing chain (BDRV_O_NO_BACKING): snapshots never read it.
        await using var img = await ImageOpen.OpenAsync(filename, fmt, writable: writable, noBacking: true, forceShare: forceShare);
        var q = img as Qcow2Image;
        switch (action)
        {
            case Action.List:
                if (q != null)
                {
                    var list = await q.GetSnapshotsAsync();
                    if (list.Count > 0)
                    {
                        var sb = new StringBuilder("Snapshot list:\n");
                        DumpHeader(sb);
                        foreach (var sn in list)
                            DumpRow(sb, Row.Of(sn));
                        Io.Out.Write(sb.ToString());
                    }
                }
                return 0;

            case Action.Create:
                if (q == null)
                    throw Io.Fail($"Could not create snapshot '{name}': -95 (Operation not supported)");
                if (autoName)
                    name = AutoName(await q.GetSnapshotsAsync(), DateTimeOffset.UtcNow);
                try
                {
                    await q.CreateSnapshotAsync(new Qcow2SnapshotCreateInfo { Name = name! });
                }
                catch (Exception e) when (e is ImageException or IOException)
                {
                    var (code, text) = Errno(e);
                    throw Io.Fail($"Could not create snapshot '{name}': {code} ({text})");
                }
                if (autoName)
                    Io.Print(quiet, $"Created snapshot '{name}'\n");
                return 0;

            case Action.Apply:
                if (q == null)
                {
                    // QEMU reopens the file below a raw node to try it instead, and probes (and warns) again.
                    if (fmt == null && img.FormatName == "raw")
                        Io.ErrorRaw($"WARNING: Image format was not specified for '{filename}' and probing guessed raw.\n" +
                            "         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n" +
                            "         Specify the 'raw' format explicitly to remove the restrictions.\n");
                    throw Io.Fail($"Could not apply snapshot '{name}': Block driver does not support snapshots");
                }
                try
                {
                    await q.ApplySnapshotAsync(name!);
                }
                catch (Exception e) when (e is ImageException or IOException)
                {
                    if (e is SnapshotException { Errno: "Device or resource busy", Detail: { } busy })
                        throw Io.Fail($"Could not apply snapshot '{name}': {busy}");
                    if (e is SnapshotException { Report: { } report })
                        Io.Error(report);
                    throw Io.Fail($"Could not apply snapshot '{name}': Failed to load snapshot: {Errno(e).Text}");
                }
                return 0;

            case Action.Delete:
                {
                    // qemu-img looks the name up (bdrv_snapshot_find); as an extension an ID is accepted too.
                    var list = q != null ? await q.GetSnapshotsAsync() : [];
                    int i = Qcow2Image.FindSnapshot(list, null, name);
                    if (i < 0)
                        i = Qcow2Image.FindSnapshot(list, name, null);
                    if (i < 0 || q == null)
                        throw Io.Fail($"Could not delete snapshot '{name}': snapshot not found");
                    var sn = list[i];
                    try
                    {
                        await q.DeleteSnapshotAsync(sn.Id, sn.Name);
                    }
                    catch (Exception e) when (e is ImageException or IOException)
                    {
                        string why = e is SnapshotException se ? se.Detail ?? se.Errno : ImageOpen.Describe(e, filename);
                        throw Io.Fail($"Could not delete snapshot '{name}': {why}");
                    }
                    Io.Print(quiet, $"Deleted snapshot '{sn.Name}' (ID {sn.Id})\n");
                    return 0;
                }
        }
        return 0;
    }

    private static void SetAction(ref Action action, Action a)
    {
        if (action != Action.None)
            throw Io.ErrorExit("Cannot mix '-l', '-a', '-c', '-d'");
        action = a;
    }

    /// <summary>--image-opts: driver=fmt,file.filename=path (the keys qemu-img users pass for a local file).</summary>
    private static (string File, string? Fmt) ParseImageOpts(string spec)
    {
        string? file = null, fmt = null;
        foreach (var part in spec.Split(','))
        {
            int eq = part.IndexOf('=');
            if (eq < 0)
                continue;
            string k = part[..eq], v = part[(eq + 1)..];
            if (k == "driver")
                fmt = v;
            else if (k is "file.filename" or "filename")
                file = v;
        }
        return file != null ? (file, fmt) : throw Io.Fail($"Could not open '{spec}': A block device must be specified for \"file\"");
    }

    /// <summary>The name -C gives (see <see cref="SnapshotNames.Unique"/>); qemu-img's -c "" makes a snapshot with an empty name.</summary>
    internal static string AutoName(IReadOnlyList<Qcow2Snapshot> existing, DateTimeOffset now) => SnapshotNames.Unique(existing, now);

    private static (int Code, string Text) Errno(Exception e)
    {
        if (e is SnapshotException s)
        {
            return (s.Errno switch
            {
                "No such file or directory" => -2,
                "File too large" => -27,
                "Invalid argument" => -22,
                "Operation not supported" => -95,
                "Numerical result out of range" => -34,
                _ => -5,
            }, s.Errno);
        }
        if (e.Message.Contains("would overflow", StringComparison.Ordinal))
            return (-22, "Invalid argument");
        return (-5, "Input/output error");
    }

    // ---- listing (bdrv_snapshot_dump) ------------------------------------------------------------------------

    private readonly record struct Row(string Id, string Name, ulong VmStateSize, long DateSec, ulong VmClockNs, ulong? Icount)
    {
        // qcow2_snapshot_list copies the strings into QEMUSnapshotInfo's fixed arrays.
        public static Row Of(Qcow2Snapshot sn) => new(Cut(sn.Id, 127), Cut(sn.Name, 255), sn.VmStateSize, sn.DateSeconds,
            sn.VmClockNanoseconds, sn.Icount == ulong.MaxValue ? null : sn.Icount);
    }

    private static string Cut(string s, int maxBytes)
    {
        var b = Encoding.UTF8.GetBytes(s);
        return b.Length <= maxBytes ? s : Encoding.UTF8.GetString(b, 0, maxBytes);
    }

    private static void DumpHeader(StringBuilder sb) =>
        sb.Append(CultureInfo.InvariantCulture, $"{"ID",-10}{"TAG",-17}{"VM SIZE",8}{"DATE",20}{"VM CLOCK",13}{"ICOUNT",11}\n");

    private static void DumpRow(StringBuilder sb, Row r)
    {
        var date = DateTimeOffset.FromUnixTimeSeconds(r.DateSec).ToLocalTime();
        ulong secs = r.VmClockNs / 1_000_000_000;
        string clock = string.Create(CultureInfo.InvariantCulture,
            $"{(int)(secs / 3600):00}:{(int)(secs / 60 % 60):00}:{(int)(secs % 60):00}.{(int)(r.VmClockNs / 1_000_000 % 1000):000}");
        string icount = r.Icount is { } ic ? ((long)ic).ToString(CultureInfo.InvariantCulture) : "";
        sb.Append(PadBytes(r.Id, 9)).Append(' ').Append(PadBytes(r.Name, 16)).Append(' ')
          .Append(Sizes.SizeToStr(r.VmStateSize).PadLeft(8))
          .Append(date.ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture).PadLeft(20))
          .Append(clock.PadLeft(13)).Append(icount.PadLeft(11)).Append('\n');
    }

    /// <summary>printf's "%-Ns": padding counts bytes.</summary>
    private static string PadBytes(string s, int width)
    {
        int n = Encoding.UTF8.GetByteCount(s);
        return n >= width ? s : s + new string(' ', width - n);
    }

    /// <summary>qemu-img info's "Snapshot list:" body from the SnapshotInfo list.</summary>
    private static void DumpList(StringBuilder sb, QList snapshots)
    {
        DumpHeader(sb);
        foreach (var item in snapshots.Items)
        {
            var d = (QDict)item;
            long Num(string k) => d.Get(k) is QNum n ? n.Value : 0;
            ulong? icount = d.Get("icount") is QNum ic ? (ulong)ic.Value : null;
            DumpRow(sb, new Row(((QString)d.Get("id")!).Value, ((QString)d.Get("name")!).Value, (ulong)Num("vm-state-size"),
                Num("date-sec"), (ulong)Num("vm-clock-sec") * 1_000_000_000 + (ulong)Num("vm-clock-nsec"), icount));
        }
    }

    /// <summary>bdrv_query_snapshot_info_list: QEMU's SnapshotInfo per entry, present only when there are snapshots.</summary>
    private static async ValueTask AddSnapshotsAsync(IImage img, ImageInfo info, CancellationToken ct)
    {
        if (img is not Qcow2Image q || q.Header.SnapshotCount == 0)
            return;
        var list = await q.GetSnapshotsAsync(ct);
        if (list.Count == 0)
            return;
        var l = new QList();
        foreach (var sn in list)
        {
            var r = Row.Of(sn);
            var d = new QDict()
                .Put("id", r.Id)
                .Put("name", r.Name)
                .Put("vm-state-size", (long)r.VmStateSize)
                .Put("date-sec", r.DateSec)
                .Put("date-nsec", (long)sn.DateNanoseconds)
                .Put("vm-clock-sec", (long)(r.VmClockNs / 1_000_000_000))
                .Put("vm-clock-nsec", (long)(r.VmClockNs % 1_000_000_000));
            if (r.Icount is { } ic)
                d.Put("icount", (long)ic);
            l.Add(d);
        }
        info.Snapshots = l;
    }
}
