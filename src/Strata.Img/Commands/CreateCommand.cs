using Strata.Img.Cli;

namespace Strata.Img.Commands;

/// <summary>qemu-img create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]</summary>
public static class CreateCommand
{
    private static readonly LongOption[] Longs =
    [
        new("help", ArgKind.None, 'h'),
        new("object", ArgKind.Required, 256),
    ];

    public static async Task<int> RunAsync(string[] args)
    {
        string fmt = "raw";
        string? baseFilename = null, baseFmt = null, options = null;
        bool quiet = false, noBacking = false;
        var (opts, pos) = GetOpt.Parse(args, ":F:b:f:ho:qu", Longs);
        foreach (var o in opts)
        {
            switch (o.Id)
            {
                case 'h': return Help.Show();
                case 'F': baseFmt = o.Value; break;
                case 'b': baseFilename = o.Value; break;
                case 'f': fmt = o.Value!; break;
                case 'o':
                    if (!QemuOpts.IsValidOptionList(o.Value!))
                        throw Io.Fail($"Invalid option list: {o.Value}");
                    options = options == null ? o.Value : options + "," + o.Value;
                    break;
                case 'q': quiet = true; break;
                case 'u': noBacking = true; break;
                default: throw Io.ErrorExit($"option not supported: {o.Text}");
            }
        }
        string? filename = pos.Count > 0 ? pos[0] : null;
        if (QemuOpts.HasHelpOption(options))
            return QemuOpts.PrintHelp(filename, fmt);
        if (filename == null)
            throw Io.ErrorExit("Expecting image file name");
        long size = -1;
        if (pos.Count > 1)
            size = Sizes.CvtNum("image size", pos[1]);
        if (pos.Count > 2)
            throw Io.ErrorExit($"Unexpected argument: {pos[2]}");
        try
        {
            await ImageCreate.ImgCreateAsync(filename, fmt, baseFilename, baseFmt, options, size, noBacking, quiet);
        }
        catch (CreateException e)
        {
            Io.Error($"{filename}: {e.Message}", e.Hint);
            return 1;
        }
        return 0;
    }
}
