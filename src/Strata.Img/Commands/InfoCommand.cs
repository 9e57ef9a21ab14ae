using System.Text;
using Strata.Img.Cli;

namespace Strata.Img.Commands;

/// <summary>qemu-img info [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename</summary>
public static class InfoCommand
{
    private const int OptOutput = 256, OptBackingChain = 257, OptObject = 258, OptImageOpts = 259;

    private static readonly LongOption[] Longs =
    [
        new("help", ArgKind.None, 'h'),
        new("format", ArgKind.Required, 'f'),
        new("output", ArgKind.Required, OptOutput),
        new("backing-chain", ArgKind.None, OptBackingChain),
        new("object", ArgKind.Required, OptObject),
        new("image-opts", ArgKind.None, OptImageOpts),
        new("force-share", ArgKind.None, 'U'),
    ];

    public static async Task<int> RunAsync(string[] args)
    {
        string? fmt = null, output = null;
        bool chain = false, forceShare = false;
        var (opts, pos) = GetOpt.Parse(args, ":f:hU", Longs);
        foreach (var o in opts)
        {
            switch (o.Id)
            {
                case 'h': return Help.Show();
                case 'f': fmt = o.Value; break;
                case OptOutput: output = o.Value; break;
                case OptBackingChain: chain = true; break;
                case 'U': forceShare = true; break;
                default: throw Io.ErrorExit($"option not supported: {o.Text}");
            }
        }
        if (pos.Count != 1)
            throw Io.ErrorExit("Expecting one image file name");
        bool json = Io.ParseOutputFormat(output);

        var list = new List<ImageInfo>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        string? filename = pos[0];
        while (filename != null)
        {
            if (!seen.Add(filename))
                throw Io.Fail($"Backing file '{filename}' creates an infinite loop.");
            await using (var img = await ImageOpen.OpenAsync(filename, fmt, noBacking: true, forceShare: forceShare, noIo: true))
                list.Add(await ImageInfo.CollectAsync(img, filename));
            var info = list[^1];
            filename = null;
            fmt = null;
            if (chain)
            {
                filename = info.FullBackingFilename;
                fmt = info.BackingFilenameFormat;
            }
        }

        var sb = new StringBuilder();
        if (json)
        {
            if (chain)
            {
                var l = new QList();
                foreach (var i in list)
                    l.Add(i.ToQDict());
                sb.Append(QJson.ToPrettyJson(l)).Append('\n');
            }
            else
                sb.Append(QJson.ToPrettyJson(list[0].ToQDict())).Append('\n');
        }
        else
        {
            for (int i = 0; i < list.Count; i++)
            {
                if (i > 0)
                    sb.Append('\n');
                list[i].DumpHuman(sb);
            }
        }
        Io.Out.Write(sb.ToString());
        return 0;
    }
}
