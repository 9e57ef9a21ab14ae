using Strata.Images;
using Strata.Images.Storage;
using Strata.Img.Cli;

namespace Strata.Img.Commands;

/// <summary>qemu-img resize [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size</summary>
public static class ResizeCommand
{
    private const int OptObject = 256, OptImageOpts = 257, OptPrealloc = 258, OptShrink = 259;

    private static readonly LongOption[] Longs =
    [
        new("help", ArgKind.None, 'h'),
        new("object", ArgKind.Required, OptObject),
        new("image-opts", ArgKind.None, OptImageOpts),
        new("preallocation", ArgKind.Required, OptPrealloc),
        new("shrink", ArgKind.None, OptShrink),
    ];

    public static async Task<int> RunAsync(string[] args)
    {
        // The size is taken off the end first, so that negative sizes are not parsed as options.
        if (args.Length < 2)
            throw Io.ErrorExit("Not enough arguments");
        string size = args[^1];
        string? fmt = null;
        bool quiet = false, shrink = false;
        Preallocation prealloc = Preallocation.Off;
        var (opts, pos) = GetOpt.Parse(args[..^1], ":f:hq", Longs);
        foreach (var o in opts)
        {
            switch (o.Id)
            {
                case 'h': return Help.Show();
                case 'f': fmt = o.Value; break;
                case 'q': quiet = true; break;
                case OptObject: break;
                case OptImageOpts: throw Io.Fail("--image-opts is not supported");
                case OptPrealloc:
                    prealloc = ImageCreate.ParsePrealloc(o.Value) is { } p && o.Value != null
                        ? p
                        : throw Io.Fail($"Invalid preallocation mode '{o.Value}'");
                    break;
                case OptShrink: shrink = true; break;
            }
        }
        if (pos.Count != 1)
            throw Io.ErrorExit("Expecting image file name and size");
        string filename = pos[0];
        int relative = 0;
        if (size.StartsWith('+'))
        {
            relative = 1;
            size = size[1..];
        }
        else if (size.StartsWith('-'))
        {
            relative = -1;
            size = size[1..];
        }
        var param = new QemuOpts([new OptDesc("size", OptType.Size, "Virtual disk size")]);
        try
        {
            param.Set("size", size);
        }
        catch (OptsException e)
        {
            Io.Error(e.Message, e.Hint);
            return 1;
        }
        long n = (long)param.GetNumber("size")!.Value;

        await using var img = await ImageOpen.OpenAsync(filename, fmt, writable: true, resize: true);
        long current = ImageIo.VirtualSize(img);
        long total = relative != 0 ? current + n * relative : n;
        if (total <= 0)
            throw Io.Fail("New image size must be positive");
        if (total <= current && prealloc != Preallocation.Off)
            throw Io.Fail("Preallocation can only be used for growing images");
        if (total < current && !shrink)
        {
            Io.Error("Use the --shrink option to perform a shrink operation.");
            Io.Warn("Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.");
            return 1;
        }
        try
        {
            if (img.FormatName == "raw" && prealloc == Preallocation.Metadata)
                throw new ImageException("Unsupported preallocation mode: metadata");
            if (img.FormatName == "qcow2" && (total & 511) != 0)
                throw new ImageException("The new size must be a multiple of 512");
            await img.ResizeAsync(total, allowShrink: true, prealloc);
            await img.FlushAsync();
        }
        catch (Exception e) when (e is ImageException or IOException or ArgumentException)
        {
            Io.Error(ImageOpen.Describe(e, filename));
            return 1;
        }
        Io.Print(quiet, "Image resized.\n");
        return 0;
    }
}
