using System.Numerics;
using System.Text.Json.Nodes;
using Strata.Images;
using Strata.Images.Qcow2;
using Strata.Images.Storage;

namespace Strata.Block.Jobs;

/// <summary>
/// blockdev-create's job (block/create.c): creates an image with one driver's create function, as a job of type
/// "create" that the user dismisses (auto-finalize on, auto-dismiss off). Failures end the job with an error
/// (query-jobs), not the command. Checks that QEMU makes before its first I/O fail before the command returns;
/// the I/O itself runs after it, as QEMU's thread pool does.
/// </summary>
public sealed class CreateJob : Job
{
    private readonly BlockGraph _graph;
    private readonly CreateRequest _request;

    private CreateJob(string id, BlockGraph graph, CreateRequest request)
        : base(id, autoFinalize: true, autoDismiss: false)
    {
        _graph = graph;
        _request = request;
    }

    public override string Type => "create";

    /// <summary>Drivers with a create function in QEMU 7.2 that strata-daemon does not have.</summary>
    private static readonly string[] OtherCreateDrivers = ["gluster", "luks", "nfs", "parallels", "qcow", "qed", "rbd", "ssh", "vdi", "vhdx", "vmdk", "vpc"];

    /// <summary>
    /// qmp_blockdev_create's checks of the driver: what QEMU says for drivers that cannot create (raw, null-co, ...).
    /// Call before parsing the driver's members.
    /// </summary>
    public static void CheckDriver(string driver)
    {
        if (driver is "file" or "qcow2")
            return;
        if (Array.IndexOf(OtherCreateDrivers, driver) >= 0)
            throw new BlockException($"Driver '{driver}' is not supported by strata-daemon");
        throw new BlockException("Driver does not support blockdev-create");
    }

    /// <summary>qmp_blockdev_create: creates the job and starts it.</summary>
    public static CreateJob Start(JobRegistry registry, BlockGraph graph, string jobId, CreateRequest request)
    {
        CheckDriver(request.Driver);
        var job = registry.Create(new CreateJob(jobId, graph, request));
        registry.Start(job);
        return job;
    }

    protected override async Task RunAsync()
    {
        ProgressSetRemaining(1);
        try
        {
            switch (_request)
            {
                case FileCreateRequest f:
                    await CreateFileAsync(f).ConfigureAwait(false);
                    break;
                case Qcow2CreateRequest q:
                    await CreateQcow2Async(q).ConfigureAwait(false);
                    break;
                default:
                    throw new BlockException("Driver does not support blockdev-create");
            }
        }
        finally
        {
            ProgressUpdate(1);
        }
    }

    // ---- file (raw_co_create) ---------------------------------------------------------------------------

    private static async Task CreateFileAsync(FileCreateRequest o)
    {
        if (o.ExtentSizeHint > uint.MaxValue)
            throw new BlockException("Extent size hint is too large");
        var storage = OpenForCreate(o.Filename);
        await using (storage.ConfigureAwait(false))
        {
            // nocow and the extent size hint only tune btrfs and XFS; QEMU ignores their failures, and so does Strata.
            await Task.Run(async () =>
            {
                if (o.Preallocation == Preallocation.Metadata)
                    throw new BlockException("Unsupported preallocation mode: metadata");
                if (o.Size > long.MaxValue)
                    throw new BlockException("Could not resize file: Invalid argument");
                try
                {
                    await storage.SetLengthAsync((long)o.Size, o.Preallocation).ConfigureAwait(false);
                }
                catch (IOException e)
                {
                    throw new BlockException($"Could not resize file: {Reason(e.Message)}");
                }
            }).ConfigureAwait(false);
        }
    }

    /// <summary>qemu_create: the file is created (or cut to nothing) before anything can fail on its size.</summary>
    private static FileStorage OpenForCreate(string filename)
    {
        try
        {
            return FileStorage.Create(filename, new FileStorageOptions());
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new BlockException($"Could not create '{filename}': {Reason(e.Message)}");
        }
    }

    /// <summary>"Could not open 'x': No such file or directory" → "No such file or directory".</summary>
    private static string Reason(string message)
    {
        int i = message.LastIndexOf("': ", StringComparison.Ordinal);
        return i >= 0 ? message[(i + 3)..] : message;
    }

    // ---- qcow2 (qcow2_co_create) -------------------------------------------------------------------------

    private async Task CreateQcow2Async(Qcow2CreateRequest q)
    {
        BlockNode? opened = null;
        var node = q.File.NodeName is { } name ? _graph.Get(name) : opened = await OpenInlineAsync(q.File.Options!).ConfigureAwait(false);
        try
        {
            var options = Qcow2Options(q);
            if (q.DataFile?.NodeName is { } dataName)
                _graph.Get(dataName);

            var backend = new BlockBackend("an unnamed block device", node, BlockPermissions.Write | BlockPermissions.Resize, BlockPermissions.All);
            try
            {
                // From here on QEMU does I/O in its thread pool: the rest completes after the command's reply.
                await Task.Run(async () =>
                {
                    // QEMU fails when it opens the new image with its data file, after the command has returned.
                    if (q.DataFile is not null)
                        throw new BlockException("External data files are not supported by strata-daemon");
                    var storage = new BackendStorage(backend, keepContentOnTruncateToZero: true);
                    // QEMU writes the empty image first and fails when it grows it: leave the same empty image.
                    string? resizeFailure = ResizeFailure(q.Size, options);
                    var create = resizeFailure is null ? options
                        : options with { Size = 0, Preallocation = Preallocation.Off, BackingFile = null, BackingFormat = null };
                    var image = await Qcow2Creator.CreateAsync(storage, create, new Qcow2OpenOptions { OwnsStorage = false }).ConfigureAwait(false);
                    await image.DisposeAsync().ConfigureAwait(false);
                    if (resizeFailure is not null)
                        throw new BlockException("Could not resize image: " + resizeFailure);
                }).ConfigureAwait(false);
            }
            finally
            {
                backend.Release();
            }

            // Encryption is set up last, on the finished image; Strata has no secrets, so the key is never found.
            if (q.Encrypt is { } encrypt)
            {
                throw encrypt.KeySecret is { } secret
                    ? new BlockException($"No secret with id '{secret}'")
                    : new BlockException("Parameter 'encrypt.key-secret' is required for cipher");
            }
        }
        finally
        {
            if (opened is not null)
                await _graph.DeleteAsync(opened.NodeName).ConfigureAwait(false);
        }
    }

    /// <summary>A file given inline is opened for the job only (QEMU opens it without a name).</summary>
    private async Task<BlockNode> OpenInlineAsync(JsonObject options)
    {
        await Task.Yield(); // QEMU opens it inside the job's coroutine, after the command
        var copy = (JsonObject)options.DeepClone();
        copy["node-name"] ??= $"strata-create-{Id}";
        return await _graph.AddAsync(copy).ConfigureAwait(false);
    }

    /// <summary>Why qcow2_co_truncate refuses the size, with its messages, or null.</summary>
    private static string? ResizeFailure(ulong size, Qcow2CreateOptions o)
    {
        if (size > long.MaxValue)
            return "Image size cannot be negative";
        int clusterBits = BitOperations.Log2((uint)o.ClusterSize);
        int l2Bits = clusterBits - (o.ExtendedL2 ? 4 : 3);
        ulong perL1Entry = 1UL << (clusterBits + l2Bits);
        ulong l1Entries = (size + perL1Entry - 1) / perL1Entry;
        return l1Entries * 8 > 32UL << 20 // QCOW_MAX_L1_SIZE
            ? "Failed to grow the L1 table: File too large" : null;
    }

    private const string UseV3 = " (use version=v3 or greater)";

    /// <summary>qcow2_co_create's checks, in its order and with its messages (which differ from qemu-img create's).</summary>
    internal static Qcow2CreateOptions Qcow2Options(Qcow2CreateRequest q)
    {
        if (q.Size % 512 != 0)
            throw new BlockException("Image size must be a multiple of 512 bytes");
        int version = q.Version ?? 3;
        ulong clusterSize = q.ClusterSize ?? 65536;
        bool extendedL2 = q.ExtendedL2 ?? false;
        if (extendedL2 && version < 3)
            throw new BlockException("Extended L2 entries are only supported with compatibility level 1.1 and above" + UseV3);
        if (!BitOperations.IsPow2(clusterSize) || clusterSize < 512 || clusterSize > 2 * 1024 * 1024)
            throw new BlockException("Cluster size must be a power of two between 512 and 2048k");
        if (extendedL2 && clusterSize < 16384)
            throw new BlockException("Extended L2 entries are only supported with cluster sizes of at least 16384 bytes");
        var prealloc = q.Preallocation ?? Preallocation.Off;
        if (q.BackingFile is not null && prealloc != Preallocation.Off && !extendedL2)
            throw new BlockException("Backing file and preallocation can only be used at the same time if extended_l2 is on");
        if (q.BackingFormat is not null && q.BackingFile is null)
            throw new BlockException("Backing format cannot be used without backing file");
        bool lazy = q.LazyRefcounts ?? false;
        if (version < 3 && lazy)
            throw new BlockException("Lazy refcounts only supported with compatibility level 1.1 and above" + UseV3);
        long refcountBits = q.RefcountBits ?? 16;
        if (refcountBits > 64 || refcountBits <= 0 || !BitOperations.IsPow2(refcountBits))
            throw new BlockException("Refcount width must be a power of two and may not exceed 64 bits");
        if (version < 3 && refcountBits != 16)
            throw new BlockException("Different refcount widths than 16 bits require compatibility level 1.1 or above" + UseV3);
        bool dataFileRaw = q.DataFileRaw ?? false;
        if (dataFileRaw && q.DataFile is null)
            throw new BlockException("data-file-raw requires data-file");
        if (dataFileRaw && q.BackingFile is not null)
            throw new BlockException("Backing file and data-file-raw cannot be used at the same time");
        if (q.DataFile is not null && version < 3)
            throw new BlockException("External data files are only supported with compatibility level 1.1 and above" + UseV3);
        var compression = q.CompressionType ?? CompressionType.Zlib;
        if (compression != CompressionType.Zlib && version < 3)
            throw new BlockException("Non-zlib compression type is only supported with compatibility level 1.1 and above" + UseV3);
        return new Qcow2CreateOptions
        {
            Size = (long)Math.Min(q.Size, long.MaxValue), // larger sizes fail at the resize (see ResizeFailure)
            Version = version,
            ClusterSize = (int)clusterSize,
            RefcountBits = (int)refcountBits,
            LazyRefcounts = lazy,
            ExtendedL2 = extendedL2,
            CompressionType = compression,
            Preallocation = prealloc,
            BackingFile = q.BackingFile,
            BackingFormat = q.BackingFormat,
        };
    }
}
