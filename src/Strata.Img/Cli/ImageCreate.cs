using System.Numerics;
using Strata.Images;
using Strata.Images.Format;
using Strata.Images.Qcow2;
using Strata.Images.Storage;

namespace Strata.Img.Cli;

/// <summary>An error from image creation; printed as "filename: message" (plus a hint, if any).</summary>
public sealed class CreateException(string message, string? hint = null, bool efbig = false) : Exception(message)
{
    public string? Hint { get; } = hint;
    public bool TooLarge { get; } = efbig;
}

/// <summary>
/// QEMU's bdrv_img_create and the format create functions (qcow2_co_create_opts, file-posix raw_co_create),
/// with their option handling, checks and messages. Used by create and convert.
/// </summary>
public static class ImageCreate
{
    /// <summary>QAPI BlockdevDriver names (QEMU 7.2): what backing_fmt may name.</summary>
    private static readonly HashSet<string> BlockdevDrivers = new(StringComparer.Ordinal)
    {
        "blkdebug", "blklogwrites", "blkreplay", "blkverify", "bochs", "cloop", "compress", "copy-before-write",
        "copy-on-read", "dmg", "file", "snapshot-access", "ftp", "ftps", "gluster", "host_cdrom", "host_device",
        "http", "https", "io_uring", "iscsi", "luks", "nbd", "nfs", "null-aio", "null-co", "nvme", "nvme-io_uring",
        "parallels", "preallocate", "qcow", "qcow2", "qed", "quorum", "raw", "rbd", "replication", "ssh",
        "throttle", "vdi", "vhdx", "virtio-blk-vfio-pci", "virtio-blk-vhost-user", "virtio-blk-vhost-vdpa",
        "vmdk", "vpc", "vvfat",
    };

    /// <summary>Parses -o options for a format plus the file protocol (errors as <see cref="CreateException"/>).</summary>
    public static QemuOpts ParseOptions(string fmt, string? options)
    {
        var descs = OptLists.ForFormat(fmt) ?? throw new CreateException($"Unknown file format '{fmt}'");
        var opts = new QemuOpts(OptLists.Append(descs, OptLists.File));
        if (options != null)
        {
            try
            {
                opts.Parse(options);
            }
            catch (OptsException e)
            {
                throw new CreateException(e.Message, e.Hint);
            }
        }
        return opts;
    }

    /// <summary>bdrv_img_create: option merging, backing file checks, the "Formatting" line, then the format's create.</summary>
    public static async Task ImgCreateAsync(string filename, string fmt, string? baseFilename, string? baseFmt,
        string? options, long imgSize, bool noBacking, bool quiet, CancellationToken ct = default)
    {
        var opts = ParseOptions(fmt, options);
        if (!opts.Has("size"))
            opts.SetNumber("size", imgSize);
        else if (imgSize != -1)
            throw new CreateException("The image size must be specified only once");

        bool qcow2 = fmt == "qcow2";
        if (baseFilename != null)
        {
            if (!qcow2)
                throw new CreateException($"Backing file not supported for file format '{fmt}'");
            opts.Set("backing_file", baseFilename);
        }
        if (baseFmt != null)
        {
            if (!qcow2)
                throw new CreateException($"Backing file format not supported for file format '{fmt}'");
            opts.Set("backing_fmt", baseFmt);
        }
        string? backingFile = opts.Get("backing_file");
        if (backingFile != null)
        {
            if (backingFile == filename)
                throw new CreateException("Error: Trying to create an image with the same filename as the backing file");
            if (backingFile.Length == 0)
                throw new CreateException("Expected backing file name, got empty string");
        }
        string? backingFmt = opts.Get("backing_fmt");
        long size = (long)(opts.GetNumber("size") ?? ulong.MaxValue);

        if (backingFile != null && !noBacking)
        {
            string full = BackingPath.Resolve(filename, backingFile);
            IImage bs;
            try
            {
                if (backingFmt != null && !ImageOpener.SupportedFormats.Contains(backingFmt))
                    throw new ImageException($"Unknown driver '{backingFmt}'");
                bs = await ImageOpener.OpenAsync(full, new ImageOpenOptions { Format = backingFmt, ReadOnly = true }, ct);
            }
            catch (Exception e) when (e is ImageException or IOException or UnauthorizedAccessException)
            {
                throw new CreateException(ImageOpen.Describe(e, full), "Could not open backing image.\n");
            }
            await using (bs)
            {
                if (backingFmt == null)
                    throw new CreateException("Backing file specified without backing format", $"Detected format of {bs.FormatName}.");
                if (size == -1)
                {
                    size = bs.Size;
                    opts.SetNumber("size", size);
                }
            }
        }
        else if (backingFile != null && backingFmt == null)
            throw new CreateException("Backing file specified without backing format");

        if (size == -1)
            throw new CreateException("Image creation needs a size parameter");

        if (!quiet)
        {
            Io.Out.Write($"Formatting '{filename}', fmt={fmt} {opts.Print()}\n");
            Io.Flush();
        }

        try
        {
            if (qcow2)
                await CreateQcow2Async(filename, opts, ct);
            else
                await CreateRawAsync(filename, opts, ct);
        }
        catch (CreateException e) when (e.TooLarge)
        {
            string hint = opts.GetNumber("cluster_size") is > 0 || OptLists.ForFormat(fmt)!.Any(d => d.Name == "cluster_size")
                ? " (try using a larger cluster size)" : "";
            throw new CreateException($"The image size is too large for file format '{fmt}'{hint}");
        }
    }

    public static Preallocation? ParsePrealloc(string? s) => s switch
    {
        null or "off" => Preallocation.Off,
        "metadata" => Preallocation.Metadata,
        "falloc" => Preallocation.Falloc,
        "full" => Preallocation.Full,
        _ => null,
    };

    /// <summary>The checks of qcow2_co_create_opts / qcow2_co_create, in QEMU's order, into library options.</summary>
    public static Qcow2CreateOptions Qcow2Options(QemuOpts opts)
    {
        if (opts.GetBool("encryption", false) || opts.Get("encrypt.format") != null)
            throw new CreateException("Encrypted images are not supported");
        if (opts.Get("data_file") != null || opts.GetBool("data_file_raw", false))
            throw new CreateException("External data files are not supported");
        string? compat = opts.Get("compat");
        int version = compat switch
        {
            null or "1.1" or "v3" => 3,
            "0.10" or "v2" => 2,
            _ => throw new CreateException($"Parameter 'version' does not accept value '{compat}'"),
        };
        string? backingFmt = opts.Get("backing_fmt");
        if (backingFmt != null && !BlockdevDrivers.Contains(backingFmt))
            throw new CreateException($"Parameter 'backing-fmt' does not accept value '{backingFmt}'");
        string? preallocStr = opts.Get("preallocation");
        var prealloc = ParsePrealloc(preallocStr) ?? throw new CreateException($"Parameter 'preallocation' does not accept value '{preallocStr}'");
        string? ctype = opts.Get("compression_type");
        var compression = ctype switch
        {
            null or "zlib" => CompressionType.Zlib,
            "zstd" => CompressionType.Zstd,
            _ => throw new CreateException($"Parameter 'compression-type' does not accept value '{ctype}'"),
        };
        ulong size = opts.GetNumber("size") ?? 0;
        size = (size + 511) & ~511UL;
        bool extL2 = opts.GetBool("extended_l2", false);
        ulong clusterSize = opts.GetNumber("cluster_size") ?? 65536;
        if (extL2 && version < 3)
            throw new CreateException("Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)");
        int cbits = clusterSize == 0 ? 32 : BitOperations.TrailingZeroCount(clusterSize);
        if (cbits < 9 || cbits > 21 || (1UL << cbits) != clusterSize)
            throw new CreateException("Cluster size must be a power of two between 512 and 2048k");
        if (extL2 && clusterSize < 16384)
            throw new CreateException("Extended L2 entries are only supported with cluster sizes of at least 16384 bytes");
        string? backingFile = opts.Get("backing_file");
        if (backingFile != null && prealloc != Preallocation.Off && !extL2)
            throw new CreateException("Backing file and preallocation can only be used at the same time if extended_l2 is on");
        if (backingFmt != null && backingFile == null)
            throw new CreateException("Backing format cannot be used without backing file");
        bool lazy = opts.GetBool("lazy_refcounts", false);
        if (version < 3 && lazy)
            throw new CreateException("Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)");
        ulong refcountBits = opts.GetNumber("refcount_bits") ?? 16;
        if (refcountBits > 64 || !BitOperations.IsPow2(refcountBits))
            throw new CreateException("Refcount width must be a power of two and may not exceed 64 bits");
        if (version < 3 && refcountBits != 16)
            throw new CreateException("Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)");
        if (compression != CompressionType.Zlib && version < 3)
            throw new CreateException("Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)");
        long perL1 = 1L << (cbits + cbits - (extL2 ? 4 : 3));
        if (size > long.MaxValue / 2 || ((long)size + perL1 - 1) / perL1 * 8 > 32L * 1024 * 1024)
            throw new CreateException("File too large", efbig: true);
        return new Qcow2CreateOptions
        {
            Size = (long)size,
            Version = version,
            ClusterSize = (int)clusterSize,
            RefcountBits = (int)refcountBits,
            LazyRefcounts = lazy,
            ExtendedL2 = extL2,
            CompressionType = compression,
            Preallocation = prealloc,
            BackingFile = backingFile,
            BackingFormat = backingFmt,
        };
    }

    private static async Task CreateQcow2Async(string filename, QemuOpts opts, CancellationToken ct)
    {
        Qcow2CreateOptions o;
        try
        {
            o = Qcow2Options(opts);
        }
        catch (CreateException)
        {
            // QEMU has created the file by then and deletes it when creation fails.
            TryDelete(filename);
            throw;
        }
        var img = await CreateQcow2ImageAsync(filename, o, ct);
        await img.DisposeAsync();
    }

    /// <summary>Creates a qcow2 image file and returns it open (read-write).</summary>
    public static async Task<Qcow2Image> CreateQcow2ImageAsync(string filename, Qcow2CreateOptions o, CancellationToken ct)
    {
        var file = CreateFile(filename);
        try
        {
            return await Qcow2Creator.CreateAsync(file, o, null, ct);
        }
        catch (Exception e) when (e is ImageException or IOException)
        {
            await file.DisposeAsync();
            TryDelete(filename);
            throw new CreateException(e.Message);
        }
    }

    private static async Task CreateRawAsync(string filename, QemuOpts opts, CancellationToken ct)
    {
        var file = await CreateRawFileAsync(filename, opts, ct);
        await file.DisposeAsync();
    }

    /// <summary>file-posix raw_co_create: size rounded up to 512, preallocation, first block allocated; returns the open file.</summary>
    public static async Task<FileStorage> CreateRawFileAsync(string filename, QemuOpts opts, CancellationToken ct)
    {
        long size = (long)(((opts.GetNumber("size") ?? 0) + 511) & ~511UL);
        string? p = opts.Get("preallocation");
        var prealloc = ParsePrealloc(p) ?? throw new CreateException($"invalid parameter value: {p}");
        var file = CreateFile(filename);
        try
        {
            if (prealloc == Preallocation.Metadata)
                throw new CreateException("Unsupported preallocation mode: metadata");
            await file.SetLengthAsync(size, prealloc, ct);
            if (prealloc == Preallocation.Off && size > 0)
            {
                // QEMU's allocate_first_block: makes later alignment probing cheap.
                int n = (int)Math.Min(size, 4096);
                await file.WriteAsync(new byte[n], 0, ct);
            }
            return file;
        }
        catch (Exception e) when (e is ImageException or IOException)
        {
            await file.DisposeAsync();
            throw new CreateException($"Could not resize file: {e.Message}");
        }
        catch
        {
            await file.DisposeAsync();
            throw;
        }
    }

    /// <summary>Creates (truncates) the image file, failing as QEMU's file-posix create does.</summary>
    private static FileStorage CreateFile(string filename)
    {
        try
        {
            return FileStorage.Create(filename, FileStorageOptions.Default);
        }
        catch (ImageLockException e)
        {
            throw new CreateException(e.Message, e.Hint is null ? null : e.Hint + "\n");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CreateException($"Could not create '{filename}': {IoReason(e)}");
        }
    }

    public static string IoReason(Exception e) => e switch
    {
        UnauthorizedAccessException => "Permission denied",
        DirectoryNotFoundException or FileNotFoundException => "No such file or directory",
        _ => e.Message,
    };

    private static void TryDelete(string filename)
    {
        try
        {
            File.Delete(filename);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }
}
