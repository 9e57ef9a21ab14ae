using Strata.Images;
using Strata.Images.Qcow2;
using Strata.Img.Cli;

namespace Strata.Img.Commands;

/// <summary>qemu-img amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename</summary>
/// <remarks>As QEMU 7.2's img_amend over qcow2_amend_options; options only valid at creation get its hint.</remarks>
public static class AmendCommand
{
    private const int OptObject = 256, OptImageOpts = 257, OptForce = 258;

    private static readonly LongOption[] Longs =
    [
        new("help", ArgKind.None, 'h'),
        new("object", ArgKind.Required, OptObject),
        new("image-opts", ArgKind.None, OptImageOpts),
        new("force", ArgKind.None, OptForce),
    ];

    /// <summary>qcow2's amend options (QCOW_COMMON_OPTIONS and the LUKS keyslot options).</summary>
    private static readonly OptDesc[] Qcow2Amend =
    [
        new("encrypt.state", OptType.String, "Select new state of affected keyslots (active/inactive)"),
        new("encrypt.keyslot", OptType.Number, "Select a single keyslot to modify explicitly"),
        new("encrypt.old-secret", OptType.String, "Select all keyslots that match this password"),
        new("encrypt.new-secret", OptType.String, "New secret to set in the matching keyslots. Empty string to erase"),
        new("encrypt.iter-time", OptType.Number, "Time to spend in PBKDF in milliseconds"),
        .. OptLists.Qcow2Common,
    ];

    public static async Task<int> RunAsync(string[] args)
    {
        string? fmt = null, options = null;
        string cache = "writeback";
        bool progress = false, quiet = false, imageOpts = false;
        var (opts, pos) = GetOpt.Parse(args, ":ho:f:t:pq", Longs);
        foreach (var o in opts)
        {
            switch (o.Id)
            {
                case 'h': return Help.Show();
                case 'o':
                    if (!QemuOpts.IsValidOptionList(o.Value!))
                        throw Io.Fail($"Invalid option list: {o.Value}");
                    options = options == null ? o.Value : options + "," + o.Value;
                    break;
                case 'f': fmt = o.Value; break;
                case 't': cache = o.Value!; break;
                case 'p': progress = true; break;
                case 'q': quiet = true; break;
                case OptObject: break;
                case OptImageOpts: imageOpts = true; break;
                case OptForce: break;
            }
        }
        if (options == null)
            throw Io.ErrorExit("Must specify options (-o)");
        if (quiet)
            progress = false;
        var prog = new Progress(progress, 1.0f);
        try
        {
            return await AmendAsync();
        }
        finally
        {
            prog.End();
        }

        async Task<int> AmendAsync()
        {
            string? filename = pos.Count == 1 ? pos[0] : null;
            if (fmt != null && QemuOpts.HasHelpOption(options))
                return PrintHelp(fmt);
            if (pos.Count != 1)
            {
                Io.Error("Expecting one image file name");
                return 1;
            }
            if (ChainCli.ParseCacheMode(cache) is not { } mode)
            {
                Io.Error($"Invalid cache option: {cache}");
                return 1;
            }
            if (imageOpts)
                (filename, fmt) = ChainCli.ParseImageOpts(filename!);
            await using var img = await ImageOpen.OpenAsync(filename!, fmt, writable: true, direct: mode.Direct, noFlush: mode.NoFlush);
            if (QemuOpts.HasHelpOption(options))
                return PrintHelp(img.FormatName);
            if (img is not Qcow2Image q)
            {
                Io.Error($"Format driver '{img.FormatName}' does not support option amendment");
                return 1;
            }

            var amendOpts = new QemuOpts(Qcow2Amend);
            try
            {
                amendOpts.Parse(options);
            }
            catch (OptsException e)
            {
                Io.Error(e.Message, e.Hint);
                if (e.Hint == null)
                {
                    try
                    {
                        new QemuOpts(OptLists.Append(OptLists.Qcow2, OptLists.File)).Parse(options);
                        Io.ErrorRaw("This option is only supported for image creation\n");
                    }
                    catch (OptsException)
                    {
                        // Not a creation option either: the message alone.
                    }
                }
                return 1;
            }

            Qcow2AmendOptions request;
            try
            {
                request = BuildRequest(amendOpts, q);
            }
            catch (AmendException e)
            {
                Io.Error(e.Message);
                return 1;
            }

            prog.Print(0, 0);
            int ops = (request.Version is { } v && v != q.Header.Version ? 1 : 0)
                + (request.RefcountBits is { } rb && rb != q.Header.RefcountBits ? 1 : 0);
            int opIndex = -1;
            long lastTotal = -1;
            void Status(long done, long total)
            {
                if (done == 0 || total != lastTotal)
                    opIndex++;
                lastTotal = total;
                float part = total == 0 ? 0 : (float)done / total;
                prog.Print(ops == 0 ? 100 : Math.Min(100, (Math.Max(opIndex, 0) + part) * 100 / ops), 0);
            }
            try
            {
                await q.AmendAsync(request, Status);
            }
            catch (AmendException e)
            {
                prog.Print(100, 0);
                Io.Error(e.Message, e.Hint);
                return 1;
            }
            catch (Exception e) when (e is ImageException or IOException or ArgumentException)
            {
                prog.Print(100, 0);
                Io.Error(ImageOpen.Describe(e, filename));
                return 1;
            }
            prog.Print(100, 0);
            return 0;
        }
    }

    private static int PrintHelp(string fmt)
    {
        if (fmt == "qcow2")
        {
            Io.Out.Write("Amend options for 'qcow2':\n");
            Io.Out.Write(QemuOpts.HelpLines(Qcow2Amend));
            return 0;
        }
        if (OptLists.ForFormat(fmt) == null && !ChainCli.QemuFormats.Contains(fmt))
        {
            Io.Error($"Unknown file format '{fmt}'");
            return 1;
        }
        Io.Error($"Format driver '{fmt}' does not support option amendment");
        return 1;
    }

    /// <summary>The checks qcow2_amend_options makes while reading the options, in its order.</summary>
    private static Qcow2AmendOptions BuildRequest(QemuOpts o, Qcow2Image img)
    {
        int? version = null;
        long? size = null;
        bool? lazy = null;
        int? refcountBits = null;
        string? backingFile = null, backingFmt = null;
        foreach (var d in Qcow2Amend)
        {
            if (!o.Has(d.Name))
                continue;
            switch (d.Name)
            {
                case "compat":
                    string compat = o.Get("compat")!;
                    version = compat switch
                    {
                        "0.10" or "v2" => 2,
                        "1.1" or "v3" => 3,
                        _ => throw new AmendException($"Unknown compatibility level {compat}"),
                    };
                    break;
                case "size":
                    size = (long)o.GetNumber("size")!.Value;
                    break;
                case "backing_file": backingFile = o.Get("backing_file"); break;
                case "backing_fmt": backingFmt = o.Get("backing_fmt"); break;
                case "lazy_refcounts": lazy = o.GetBool("lazy_refcounts", img.Header.LazyRefcounts); break;
                case "refcount_bits":
                    ulong bits = o.GetNumber("refcount_bits")!.Value;
                    if (bits == 0 || bits > 64 || (bits & (bits - 1)) != 0)
                        throw new AmendException("Refcount width must be a power of two and may not exceed 64 bits");
                    refcountBits = (int)bits;
                    break;
                case "data_file":
                    if (img.Header.ExternalDataFile == null)
                        throw new AmendException("data-file can only be set for images that use an external data file");
                    break;
                case "data_file_raw":
                    if (o.GetBool("data_file_raw", false))
                        throw new AmendException("data-file-raw cannot be set on existing images");
                    break;
                default:
                    throw new AmendException("Can't amend encryption options - encryption not present");
            }
        }
        return new Qcow2AmendOptions
        {
            Version = version,
            Size = size,
            LazyRefcounts = lazy,
            RefcountBits = refcountBits,
            BackingFile = backingFile,
            BackingFormat = backingFmt,
        };
    }
}
