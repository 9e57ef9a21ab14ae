using Strata.Images;
using Strata.Images.Chain;
using Strata.Images.Format;
using Strata.Img.Cli;

namespace Strata.Img.Commands;

/// <summary>qemu-img commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] [-p] filename</summary>
/// <remarks>
/// As QEMU 7.2's img_commit: the base is the immediate backing file, or the layer -b names (found as
/// bdrv_find_backing_image does; -b implies -d). What the layers above the base hold is written into it, then
/// (without -d) the top image is emptied. Intermediate images are left as they are.
/// </remarks>
public static class CommitCommand
{
    private const int OptObject = 256, OptImageOpts = 257;

    private static readonly LongOption[] Longs =
    [
        new("help", ArgKind.None, 'h'),
        new("object", ArgKind.Required, OptObject),
        new("image-opts", ArgKind.None, OptImageOpts),
    ];

    public static async Task<int> RunAsync(string[] args)
    {
        string? fmt = null, baseName = null;
        string cache = "writeback";
        bool progress = false, quiet = false, drop = false, imageOpts = false;
        long rate = 0;
        var (opts, pos) = GetOpt.Parse(args, ":f:ht:b:dpqr:", Longs);
        foreach (var o in opts)
        {
            switch (o.Id)
            {
                case 'h': return Help.Show();
                case 'f': fmt = o.Value; break;
                case 't': cache = o.Value!; break;
                case 'b':
                    baseName = o.Value;
                    drop = true; // as in QEMU: committing past the immediate backing file leaves the top alone
                    break;
                case 'd': drop = true; break;
                case 'p': progress = true; break;
                case 'q': quiet = true; break;
                case 'r': rate = Sizes.CvtNum("rate limit", o.Value!); break;
                case OptObject: break;
                case OptImageOpts: imageOpts = true; break;
            }
        }
        if (quiet)
            progress = false;
        if (pos.Count != 1)
            throw Io.ErrorExit("Expecting one image file name");
        string filename = pos[0];
        if (ChainCli.ParseCacheMode(cache) is not { } mode)
        {
            Io.Error($"Invalid cache option: {cache}");
            return 1;
        }
        if (imageOpts)
            (filename, fmt) = ChainCli.ParseImageOpts(filename);

        await using var top = await ImageOpen.OpenAsync(filename, fmt, writable: true, direct: mode.Direct, noFlush: mode.NoFlush);
        var prog = new Progress(progress, 1.0f);
        prog.Print(0, 100);
        string? error = null;
        try
        {
            IImage? baseImage;
            if (baseName != null)
            {
                baseImage = ChainWalk.FindBackingImage(top, baseName);
                if (baseImage == null)
                    error = $"Did not find '{baseName}' in the backing chain of '{filename}'";
            }
            else
            {
                baseImage = top.Backing;
                if (baseImage == null)
                    error = "Image does not have a backing file";
            }
            if (error == null)
            {
                // The base (and the layers between) were opened read-only with the chain: reopen it writable.
                await using var writableBase = await ReopenWritableAsync(baseImage!, mode);
                var chainTop = writableBase.Swap(top);
                try
                {
                    await Commit.CommitAsync(top, writableBase.Image,
                        (done, total) => prog.Print(total == 0 ? 100 : (float)done / total * 100, 0), rate);
                }
                finally
                {
                    chainTop.Restore();
                }
                if (!drop)
                    await Commit.MakeEmptyAsync(top);
            }
        }
        catch (Exception e) when (e is ImageException or IOException)
        {
            error = ImageOpen.Describe(e, filename);
        }
        prog.End();
        if (error != null)
        {
            Io.Error(error);
            return 1;
        }
        Io.Print(quiet, "Image committed.\n");
        return 0;
    }

    /// <summary>A writable handle on the base image, standing in for the read-only one inside the chain while the commit runs.</summary>
    private sealed class WritableBase(IImage readOnly, IImage writable) : IAsyncDisposable
    {
        public IImage Image => writable;

        /// <summary>Makes the layer above the base read through the writable handle (so that reads see what the commit wrote).</summary>
        public LayerSwap Swap(IImage top)
        {
            for (IImage? l = top; l != null; l = l.Backing)
                if (ReferenceEquals(l.Backing, readOnly) && l is Strata.Images.Qcow2.Qcow2Image q)
                {
                    q.SetBacking(writable);
                    return new LayerSwap(q, readOnly);
                }
            return new LayerSwap(null, readOnly);
        }

        public ValueTask DisposeAsync() => writable.DisposeAsync();
    }

    private readonly struct LayerSwap(Strata.Images.Qcow2.Qcow2Image? layer, IImage original)
    {
        public void Restore() => layer?.SetBacking(original);
    }

    private static async Task<WritableBase> ReopenWritableAsync(IImage baseImage, (bool Direct, bool NoFlush, bool Writethrough) mode)
    {
        var writable = await ImageOpener.OpenAsync(baseImage.FileName, new ImageOpenOptions
        {
            Format = baseImage.FormatName,
            ReadOnly = false,
            Backing = BackingPolicy.Open,
            Direct = mode.Direct,
            NoFlush = mode.NoFlush,
        });
        return new WritableBase(baseImage, writable);
    }
}
