using Strata.Images;
using Strata.Images.Chain;
using Strata.Images.Format;
using Strata.Images.Qcow2;
using Strata.Img.Cli;

namespace Strata.Img.Commands;

/// <summary>qemu-img rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt] filename</summary>
/// <remarks>
/// As QEMU 7.2's img_rebase: safe mode opens the old chain and the new backing file, copies into the overlay every
/// range it does not hold where old and new differ, then rewrites the header; -u only rewrites the header. The
/// backing name is recorded exactly as given and opened relative to the overlay's directory. A missing -F makes the
/// header change fail ("backing format must be specified") after the copy, as in 7.2.
/// </remarks>
public static class RebaseCommand
{
    private const int OptObject = 256, OptImageOpts = 257;

    private static readonly LongOption[] Longs =
    [
        new("help", ArgKind.None, 'h'),
        new("object", ArgKind.Required, OptObject),
        new("image-opts", ArgKind.None, OptImageOpts),
        new("force-share", ArgKind.None, 'U'),
    ];

    public static async Task<int> RunAsync(string[] args)
    {
        string? fmt = null, outBase = null, outBaseFmt = null;
        string cache = "writeback", srcCache = "writeback";
        bool unsafeMode = false, progress = false, quiet = false, imageOpts = false;
        var (opts, pos) = GetOpt.Parse(args, ":hf:F:b:upt:T:qU", Longs);
        foreach (var o in opts)
        {
            switch (o.Id)
            {
                case 'h': return Help.Show();
                case 'f': fmt = o.Value; break;
                case 'F': outBaseFmt = o.Value; break;
                case 'b': outBase = o.Value; break;
                case 'u': unsafeMode = true; break;
                case 'p': progress = true; break;
                case 't': cache = o.Value!; break;
                case 'T': srcCache = o.Value!; break;
                case 'q': quiet = true; break;
                case 'U': break;
                case OptObject: break;
                case OptImageOpts: imageOpts = true; break;
            }
        }
        if (quiet)
            progress = false;
        if (pos.Count != 1)
            throw Io.ErrorExit("Expecting one image file name");
        if (!unsafeMode && outBase == null)
            throw Io.ErrorExit("Must specify backing file (-b) or use unsafe mode (-u)");
        string filename = pos[0];

        var prog = new Progress(progress, 2.0f);
        prog.Print(0, 100);
        IImage? img = null, newBacking = null;
        int rc = 1;
        try
        {
            rc = await RebaseAsync();
        }
        catch (ExitException e)
        {
            rc = e.Code;
        }
        finally
        {
            if (newBacking != null)
                await newBacking.DisposeAsync();
            if (img != null)
            {
                try
                {
                    await img.DisposeAsync();
                }
                catch (Exception e) when (e is ImageException or IOException)
                {
                    Io.Error(ImageOpen.Describe(e, filename));
                    rc = 1;
                }
            }
            prog.End();
        }
        return rc;

        async Task<int> RebaseAsync()
        {
            var cacheMode = ChainCli.ParseCacheMode(cache);
            if (cacheMode == null)
            {
                Io.Error($"Invalid cache option: {cache}");
                return 1;
            }
            if (ChainCli.ParseCacheMode(srcCache) is not { } srcMode)
            {
                Io.Error($"Invalid source cache option: {srcCache}");
                return 1;
            }
            if (imageOpts)
                (filename, fmt) = ChainCli.ParseImageOpts(filename);

            // The old backing file is not opened for -u: the point may be to fix a reference to a moved file.
            img = await ImageOpen.OpenAsync(filename, fmt, writable: true, noBacking: unsafeMode,
                direct: cacheMode.Value.Direct, noFlush: cacheMode.Value.NoFlush);

            if (outBaseFmt != null && !ChainCli.QemuFormats.Contains(outBaseFmt))
            {
                Io.Error($"Invalid format name: '{outBaseFmt}'");
                return 1;
            }

            if (!unsafeMode)
            {
                IImage? target = null;
                if (outBase!.Length > 0)
                {
                    string realPath = BackingPath.Resolve(filename, outBase);
                    // Rebasing onto a layer of the current chain reuses that layer (and skips what is equal by construction).
                    target = ChainWalk.FindBackingImage(img, realPath);
                    if (target == null)
                    {
                        if (outBaseFmt != null && !ImageOpener.SupportedFormats.Contains(outBaseFmt))
                        {
                            Io.Error($"Could not open new backing file '{outBase}': Unknown driver '{outBaseFmt}'");
                            return 1;
                        }
                        try
                        {
                            newBacking = await ImageOpener.OpenAsync(realPath, new ImageOpenOptions
                            {
                                Format = outBaseFmt,
                                ReadOnly = true,
                                Direct = srcMode.Direct,
                            });
                        }
                        catch (Exception e) when (e is ImageException or IOException or UnauthorizedAccessException)
                        {
                            string why = ImageOpen.Describe(e, realPath);
                            if (!why.StartsWith("Could not open", StringComparison.Ordinal))
                                why = $"Could not open '{realPath}': {why}";
                            Io.Error($"Could not open new backing file '{outBase}': {why}");
                            return 1;
                        }
                        target = newBacking;
                    }
                }
                try
                {
                    await Rebase.CopyDifferencesAsync(img, img.Backing, target, d => prog.Print(d, 100));
                    await img.FlushAsync();
                }
                catch (Exception e) when (e is ImageException or IOException)
                {
                    Io.Error($"Error while writing to COW image: {ImageOpen.Describe(e, filename)}");
                    return 1;
                }
            }

            string? name = string.IsNullOrEmpty(outBase) ? null : outBase;
            string? error = null;
            if (name != null && outBaseFmt == null)
                error = "backing format must be specified";
            else if (img is not Qcow2Image q)
                error = "Operation not supported";
            else if (name != null && System.Text.Encoding.UTF8.GetByteCount(name) > 1023)
                error = "Invalid argument";
            else
            {
                try
                {
                    await q.ChangeBackingFileAsync(name, name != null ? outBaseFmt : null);
                }
                catch (HeaderSpaceException)
                {
                    error = "No space left in the file header";
                }
                catch (Exception e) when (e is ImageException or IOException)
                {
                    error = ImageOpen.Describe(e, filename);
                }
            }
            if (error != null)
            {
                Io.Error($"Could not change the backing file to '{outBase ?? "(null)"}': {error}");
                return 1;
            }
            prog.Print(100, 0);
            return 0;
        }
    }
}
