using Strata.Images;
using Strata.Images.Format;
using Strata.Images.Raw;
using Strata.Images.Storage;

namespace Strata.Block.Drivers;

/// <summary>
/// The "file" protocol driver: a host file, read and written as bytes. Its dirty bitmaps see every write to the file,
/// those of a format node above it included (metadata too), and grow with the file, as QEMU's
/// bdrv_co_write_req_finish does for a protocol node.
/// </summary>
public sealed class FileNode : BlockNode, IStorageObserver
{
    private readonly RawImage _image;

    private FileNode(string name, BlockNodeSettings settings, bool autoNamed, string filename, FileStorage storage)
        : base(name, "file", settings, autoNamed)
    {
        _filename = filename;
        _storage = storage;
        _image = new RawImage(storage);
        storage.Observer = this;
    }

    private protected override bool StorageRecordsWrites => true;

    void IStorageObserver.Changing(long offset, long length, bool discard)
    {
        var bitmaps = DirtyBitmaps;
        if (bitmaps.All.Count == 0)
            return;
        if (!discard)
        {
            // A write past the end extends the node, and its bitmaps with it (whole sectors, as bdrv_getlength).
            long end = WholeSectors(offset + length);
            foreach (var b in bitmaps.All)
                if (b.Size < end)
                    b.Resize(end);
        }
        bitmaps.RecordWrite(offset, length);
    }

    void IStorageObserver.Resized(long length)
    {
        foreach (var b in DirtyBitmaps.All)
            b.Resize(WholeSectors(length));
    }

    private readonly string _filename;
    private readonly FileStorage _storage;

    /// <summary>QEMU's image locks on the host file, following the permissions this node's parents take.</summary>
    public ImageLock Lock => _storage.Lock;

    internal override void PreparePermissions(BlockPermissions perm, BlockPermissions shared)
    {
        try
        {
            _storage.Lock.Prepare((LockPermissions)perm, (LockPermissions)shared);
        }
        catch (ImageLockException e)
        {
            throw new BlockException(e.Message, BlockErrorKind.Generic, e) { Hint = e.Hint };
        }
    }

    internal override void CommitPermissions(BlockPermissions perm, BlockPermissions shared) =>
        _storage.Lock.Commit((LockPermissions)perm, (LockPermissions)shared);

    internal override void AbortPermissions() => _storage.Lock.Abort();

    /// <summary>The host file's name as given in the options.</summary>
    public override string FileName => _filename;
    protected override IImage Inner => _image;

    internal static FileNode Open(string name, BlockNodeSettings settings, bool autoNamed, BlockOptions o)
    {
        string filename = o.RequireString("filename");
        var locking = o.GetEnum("locking", LockingModes) ?? LockingMode.Auto;
        o.GetEnum("aio", AioModes);
        o.GetInt("aio-max-batch");
        o.GetBool("drop-cache");
        o.GetBool("x-check-cache-dropped");
        if (o.GetString("pr-manager") != null)
            throw new BlockException("persistent reservation managers are not supported");
        o.EnsureAllRead();

        bool readOnly = settings.ReadOnly;
        FileStorage storage;
        try
        {
            storage = FileStorage.Open(filename, new FileStorageOptions(readOnly, settings.Direct, settings.NoFlush, locking));
        }
        catch (UnauthorizedAccessException) when (!readOnly && settings.AutoReadOnly)
        {
            // auto-read-only: fall back to read-only when the file cannot be opened for writing.
            readOnly = true;
            settings = settings with { ReadOnly = true };
            storage = FileStorage.Open(filename, new FileStorageOptions(true, settings.Direct, settings.NoFlush, locking));
        }
        catch (FileNotFoundException)
        {
            throw new BlockException($"Could not open '{filename}': No such file or directory");
        }
        catch (DirectoryNotFoundException)
        {
            throw new BlockException($"Could not open '{filename}': No such file or directory");
        }
        catch (UnauthorizedAccessException)
        {
            throw new BlockException($"Could not open '{filename}': Permission denied");
        }
        catch (IOException e)
        {
            throw new BlockException($"Could not open '{filename}': {e.Message}");
        }
        return new FileNode(name, settings, autoNamed, filename, storage);
    }

    private static readonly Dictionary<string, LockingMode> LockingModes = new()
    {
        ["auto"] = LockingMode.Auto, ["on"] = LockingMode.On, ["off"] = LockingMode.Off,
    };
    private static readonly Dictionary<string, int> AioModes = new() { ["threads"] = 0, ["native"] = 1, ["io_uring"] = 2 };

    public override ValueTask CloseAsync() => _image.DisposeAsync();
}

/// <summary>The "null-co" driver: a disk of a given size that stores nothing (for benchmarks).</summary>
public sealed class NullNode : BlockNode
{
    private readonly RawImage _image;

    private NullNode(string name, BlockNodeSettings settings, bool autoNamed, long size, bool readZeroes)
        : base(name, "null-co", settings, autoNamed) =>
        _image = new RawImage(new NullStorage(size, readZeroes));

    public override string FileName => "null-co://";
    protected override IImage Inner => _image;

    internal static NullNode Open(string name, BlockNodeSettings settings, bool autoNamed, BlockOptions o)
    {
        long size = o.GetInt("size") ?? 1L << 30;
        o.GetInt("latency-ns");
        bool readZeroes = o.GetBool("read-zeroes") ?? false;
        o.EnsureAllRead();
        if (size < 0)
            throw new BlockException("size must be non-negative");
        return new NullNode(name, settings, autoNamed, size, readZeroes);
    }

    public override ValueTask CloseAsync() => _image.DisposeAsync();
}
