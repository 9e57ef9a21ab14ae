using Strata.Images;
using Strata.Images.Format;
using Strata.Images.Qcow2;
using Strata.Images.Storage;

namespace Strata.Block.Drivers;

/// <summary>The "raw" format driver: its file child's bytes, unchanged.</summary>
public sealed class RawNode : BlockNode
{
    private readonly BlockNode _file;
    private readonly IImage _inner;

    internal RawNode(string name, BlockNodeSettings settings, bool autoNamed, BlockNode file)
        : base(name, "raw", settings, autoNamed)
    {
        _file = file;
        // Over blkdebug, the events QEMU's raw driver reports; otherwise straight through.
        _inner = file.Storage is IDebugEventSink sink ? new Blkdebug.RawEventsImage(file, sink) : file;
    }

    public override string FileName => _file.FileName;
    protected override IImage Inner => _inner;
    public override ValueTask CloseAsync() => ValueTask.CompletedTask;

    /// <summary>raw_child_perm: write and resize on the file only when a parent asks for them (never for metadata).</summary>
    internal override (BlockPermissions Perm, BlockPermissions Shared) ChildPermissions(ChildRole role, BlockPermissions perm, BlockPermissions shared)
    {
        var r = base.ChildPermissions(role, perm, shared);
        const BlockPermissions writeResize = BlockPermissions.Write | BlockPermissions.Resize;
        return ((r.Perm & ~writeResize) | (perm & writeResize), r.Shared);
    }
}

/// <summary>The "qcow2" format driver over its file child's storage, reading unallocated ranges from its backing child.</summary>
public sealed class Qcow2Node : BlockNode
{
    private readonly BlockNode _file;

    private Qcow2Node(string name, BlockNodeSettings settings, bool autoNamed, BlockNode file)
        : base(name, "qcow2", settings, autoNamed) => _file = file;

    public Qcow2Image Image { get; private set; } = null!; // set by OpenAsync once the file child is attached
    public override string FileName => _file.FileName;
    protected override IImage Inner => Image;
    public override Strata.Images.Bitmaps.DirtyBitmapSet DirtyBitmaps => Image.DirtyBitmaps;

    internal static async ValueTask<Qcow2Node> OpenAsync(string name, BlockNodeSettings settings, bool autoNamed, BlockNode file,
        BlockOptions o, CancellationToken ct)
    {
        long? cacheSize = o.GetInt("cache-size");
        long? l2Cache = o.GetInt("l2-cache-size");
        long? rcCache = o.GetInt("refcount-cache-size");
        o.GetInt("l2-cache-entry-size");
        o.GetInt("cache-clean-interval");
        o.GetBool("lazy-refcounts");
        o.GetBool("pass-discard-request");
        o.GetBool("pass-discard-snapshot");
        o.GetBool("pass-discard-other");
        o.GetNode("overlap-check");
        if (o.GetNode("encrypt") != null)
            throw new BlockException("qcow2 encryption is not supported");
        if (o.GetNode("data-file") != null)
            throw new BlockException("qcow2 external data files are not supported");
        if (cacheSize != null && l2Cache == null && rcCache == null)
        {
            // QEMU splits cache-size between the two caches; L2 gets most of it.
            rcCache = Math.Max(cacheSize.Value / 5, 0);
            l2Cache = cacheSize.Value - rcCache;
        }
        var node = new Qcow2Node(name, settings, autoNamed, file);
        // Take the file (and its image locks) before reading or repairing anything in it, as QEMU does.
        var edge = node.AttachChild(file, "file", ChildRole.Image);
        try
        {
            node.Image = await Qcow2Image.OpenAsync(file.Storage, new Qcow2OpenOptions
            {
                L2CacheSize = l2Cache,
                RefcountCacheSize = rcCache,
                OwnsStorage = false,
                OwnsBacking = false,
                ReadOnly = settings.ReadOnly,
            }, ct).ConfigureAwait(false);
            node.Image.NodeName = name; // bitmap messages name the node
            return node;
        }
        catch (ImageException e)
        {
            edge.Release();
            // QEMU's messages for a format node do not name the file (the node's errors are reported as the node's).
            throw new BlockException(ImageException.MessageWithoutFileName(e, file.Storage.Name), BlockErrorKind.Generic, e);
        }
        catch
        {
            edge.Release();
            throw;
        }
    }

    /// <summary>Reads of unallocated ranges go to <paramref name="backing"/> (the caller has drained I/O).</summary>
    internal void AttachBacking(BlockNode? backing) => Image.SetBacking(backing);

    public override ValueTask CloseAsync() => Image.DisposeAsync();
}
