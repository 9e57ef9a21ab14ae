using System.Globalization;
using System.Text;
using Strata.Img.Cli;

namespace Strata.Img.Commands;

/// <summary>qemu-img map [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] filename</summary>
public static class MapCommand
{
    private const int OptOutput = 256, OptObject = 257, OptImageOpts = 258, OptStart = 259, OptMax = 260;

    private static readonly LongOption[] Longs =
    [
        new("help", ArgKind.None, 'h'),
        new("format", ArgKind.Required, 'f'),
        new("output", ArgKind.Required, OptOutput),
        new("object", ArgKind.Required, OptObject),
        new("image-opts", ArgKind.None, OptImageOpts),
        new("force-share", ArgKind.None, 'U'),
        new("start-offset", ArgKind.Required, OptStart),
        new("max-length", ArgKind.Required, OptMax),
    ];

    public static async Task<int> RunAsync(string[] args)
    {
        string? fmt = null, output = null;
        long start = 0, maxLength = long.MaxValue;
        bool forceShare = false;
        var (opts, pos) = GetOpt.Parse(args, ":f:hU", Longs);
        foreach (var o in opts)
        {
            switch (o.Id)
            {
                case 'h': return Help.Show();
                case 'f': fmt = o.Value; break;
                case 'U': forceShare = true; break;
                case OptOutput: output = o.Value; break;
                case OptStart: start = Sizes.CvtNum("start offset", o.Value!); break;
                case OptMax: maxLength = Sizes.CvtNum("max length", o.Value!); break;
                default: throw Io.ErrorExit($"option not supported: {o.Text}");
            }
        }
        if (pos.Count != 1)
            throw Io.ErrorExit("Expecting one image file name");
        string filename = pos[0];
        bool json = Io.ParseOutputFormat(output);

        await using var img = await ImageOpen.OpenAsync(filename, fmt, forceShare: forceShare);
        var chain = new ChainStatus(img, filename);
        var o2 = Io.Out;
        if (json)
            o2.Write('[');
        else
            o2.Write($"{"Offset",-16}{"Length",-16}{"Mapped to",-16}File\n");

        long length = ImageIo.VirtualSize(img);
        long end = maxLength > long.MaxValue - start ? length : Math.Min(start + maxLength, length);
        var curr = new MapEntry(start, 0, 0, false, false, false, null, null);
        while (curr.Start + curr.Length < end)
        {
            long offset = curr.Start + curr.Length;
            long n = Math.Min(1L << 30, end - offset);
            MapEntry next;
            try
            {
                next = await chain.MapStatusAsync(offset, n);
            }
            catch (Exception e) when (e is Strata.Images.ImageException or IOException)
            {
                throw Io.Fail($"Could not read file metadata: {e.Message}");
            }
            if (Mergeable(curr, next))
            {
                curr.Length += next.Length;
                continue;
            }
            if (curr.Length > 0 && !Dump(json, curr, ref next))
                return 1;
            curr = next;
        }
        MapEntry none = default;
        if (!Dump(json, curr, ref none, last: true))
            return 1;
        if (json)
            o2.Write("]\n");
        return 0;
    }

    private static bool Mergeable(MapEntry curr, MapEntry next)
    {
        if (curr.Length == 0)
            return false;
        if (curr.Zero != next.Zero || curr.Data != next.Data || curr.Depth != next.Depth || curr.Present != next.Present
            || (curr.Filename != null) != (next.Filename != null) || curr.Offset.HasValue != next.Offset.HasValue)
            return false;
        if (curr.Filename != null && curr.Filename != next.Filename)
            return false;
        if (curr.Offset is { } co && co + curr.Length != next.Offset)
            return false;
        return true;
    }

    /// <summary>qemu-img's dump_map_entry.</summary>
    private static bool Dump(bool json, MapEntry e, ref MapEntry next, bool last = false)
    {
        var o = Io.Out;
        if (!json)
        {
            if (e.Data && e.Offset == null)
            {
                Io.Error("File contains external, encrypted or compressed clusters.");
                return false;
            }
            if (e.Data && !e.Zero)
                o.Write($"{Hex(e.Start),-16}{Hex(e.Length),-16}{Hex(e.Offset ?? 0),-16}{e.Filename ?? ""}\n");
            if (!last && (!next.Data || next.Zero))
            {
                next.Data = false;
                next.Zero = true;
            }
            return true;
        }
        var sb = new StringBuilder();
        var inv = CultureInfo.InvariantCulture;
        sb.Append(inv, $"{{ \"start\": {e.Start}, \"length\": {e.Length}, \"depth\": {e.Depth}, \"present\": {B(e.Present)}, \"zero\": {B(e.Zero)}, \"data\": {B(e.Data)}");
        if (e.Offset is { } off)
            sb.Append(inv, $", \"offset\": {off}");
        sb.Append('}');
        if (!last)
            sb.Append(",\n");
        o.Write(sb.ToString());
        return true;
    }

    private static string B(bool b) => b ? "true" : "false";

    /// <summary>printf "%#x": 0 stays "0".</summary>
    private static string Hex(long v) => v == 0 ? "0" : "0x" + v.ToString("x", CultureInfo.InvariantCulture);
}
