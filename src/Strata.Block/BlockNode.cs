using Strata.Images;
using Strata.Images.Bitmaps;
using Strata.Images.Format;
using Strata.Images.Storage;

namespace Strata.Block;

public enum DetectZeroes { Off, On, Unmap }

/// <summary>Options every node takes (QEMU's BlockdevOptions base members).</summary>
public sealed record BlockNodeSettings
{
    public bool ReadOnly { get; init; }
    public bool AutoReadOnly { get; init; }
    public bool Direct { get; init; }
    public bool NoFlush { get; init; }
    /// <summary>discard=unmap: discards and write-zeroes may deallocate (QEMU's default for blockdev-add is ignore).</summary>
    public bool Unmap { get; init; }
    public DetectZeroes DetectZeroes { get; init; }
    public bool ForceShare { get; init; }
}

/// <summary>
/// A node of the block graph: a driver instance (file, qcow2, raw, null-co, filters) with its children. Its data
/// path is the <see cref="IImage"/> contract, so exports, jobs and other nodes use it like any image; the node
/// adds what QEMU's generic block layer adds on top of a driver (read-only, discard and detect-zeroes policy).
/// </summary>
public abstract class BlockNode : IImage, IBlockParent
{
    private readonly List<BlockEdge> _parents = [];
    private readonly List<BlockEdge> _children = [];
    private readonly DirtyBitmapSet _ownBitmaps = new();

    protected BlockNode(string nodeName, string driver, BlockNodeSettings settings, bool autoNamed)
    {
        NodeName = nodeName;
        Driver = driver;
        Settings = settings;
        IsAutoNamed = autoNamed;
    }

    public string NodeName { get; }
    public string Driver { get; }
    public BlockNodeSettings Settings { get; private set; }
    /// <summary>Created implicitly (a child given inline or a backing file from a header): named "#blockNNN", not owned by the monitor.</summary>
    public bool IsAutoNamed { get; }
    public string Description => $"node '{NodeName}'";

    /// <summary>When QEMU would have named the node (a format node after its file child, before its backing chain): its listing order.</summary>
    public long NamingOrder { get; internal set; }

    public IReadOnlyList<BlockEdge> Parents => _parents;
    public IReadOnlyList<BlockEdge> Children => _children;
    public BlockNode? FileChild => ChildFor("file");
    public BlockNode? BackingChild => ChildFor("backing");

    /// <summary>The node that reads this one as its backing image, or null.</summary>
    public BlockNode? BackingUser
    {
        get
        {
            foreach (var e in _parents)
                if (e.Role == "backing" && e.Parent is BlockNode parent)
                    return parent;
            return null;
        }
    }

    /// <summary>QEMU's op blocker on a backing image: graph operations (delete, snapshot) refuse it with this message.</summary>
    internal void CheckNotBacking()
    {
        if (BackingUser is { } user)
            throw new BlockException($"Node '{NodeName}' is busy: node is used as backing hd of '{user.NodeName}'");
    }

    /// <summary>The job that uses this node (QEMU's op blocker of block_job_add_bdrv): "backup", or null.</summary>
    public string? JobBlocker { get; internal set; }

    /// <summary>Graph operations and other jobs refuse a node a job uses, with QEMU's message.</summary>
    internal void CheckNotBlocked()
    {
        if (JobBlocker is { } job)
            throw new BlockException($"Node '{NodeName}' is busy: block device is in use by block job: {job}");
    }

    private BlockNode? ChildFor(string role)
    {
        foreach (var e in _children)
            if (e.Role == role)
                return e.Child;
        return null;
    }

    /// <summary>The driver's image: what the data path forwards to.</summary>
    protected abstract IImage Inner { get; }

    /// <summary>The file name QEMU reports for the node (its own file, or its file child's).</summary>
    public abstract string FileName { get; }

    public virtual string FormatName => Driver;
    public IStorage Storage => Inner.Storage;
    public long Size => Inner.Size;
    public bool IsReadOnly => Settings.ReadOnly || Inner.IsReadOnly;
    public IImage? Backing => BackingChild;
    public string? BackingFileName => Inner.BackingFileName;
    public string? BackingFormat => Inner.BackingFormat;
    public int AllocationGranularity => Inner.AllocationGranularity;

    /// <summary>
    /// The node's live dirty bitmaps (QEMU's bs->dirty_bitmaps). A qcow2 node holds its image's set, so persistent
    /// bitmaps load from and store to the file; other nodes keep their own, fed by this node's write path.
    /// </summary>
    public virtual DirtyBitmapSet DirtyBitmaps => _ownBitmaps;

    /// <summary>The driver image itself, for queries (e.g. a Qcow2Image's header).</summary>
    public IImage DriverImage => Inner;
    public IImage FormatImage => Inner.FormatImage;

    // ---- graph ---------------------------------------------------------------------------------

    /// <summary>
    /// Attaches a user with fixed permissions (a backend: an export, a job, a resize), then brings the permissions of
    /// this node and everything below it up to date, as QEMU does. Throws (and attaches nothing) on a permission
    /// conflict with another parent or an image lock held by another process.
    /// </summary>
    public BlockEdge AddParent(IBlockParent parent, string role, BlockPermissions perm, BlockPermissions shared)
    {
        // force-share widens only what parent nodes share (bdrv_child_perm), not what a backend shares.
        var edge = new BlockEdge(parent, this, role, perm, shared);
        Link(edge);
        try
        {
            RefreshPermissions();
        }
        catch
        {
            Unlink(edge);
            throw;
        }
        return edge;
    }

    /// <summary>
    /// Makes <paramref name="child"/> this node's child named <paramref name="name"/>; what this node takes on it follows
    /// from its parents' permissions and <paramref name="role"/> (QEMU's bdrv_child_perm).
    /// </summary>
    public BlockEdge AttachChild(BlockNode child, string name, ChildRole role)
    {
        var (perm, shared) = PermissionsFor(role, child);
        var edge = new BlockEdge(this, child, name, perm, shared, role);
        child.Link(edge);
        try
        {
            child.RefreshPermissions();
        }
        catch
        {
            child.Unlink(edge);
            throw;
        }
        return edge;
    }

    private void Link(BlockEdge edge)
    {
        _parents.Add(edge);
        if (edge.Parent is BlockNode p)
            p._children.Add(edge);
    }

    private void Unlink(BlockEdge edge)
    {
        _parents.Remove(edge);
        if (edge.Parent is BlockNode p)
            p._children.Remove(edge);
    }

    internal void RemoveParent(BlockEdge edge)
    {
        if (!_parents.Contains(edge))
            return;
        Unlink(edge);
        try
        {
            RefreshPermissions();
        }
        catch (BlockException)
        {
            // Permissions only shrink here; like QEMU, a lock that cannot be dropped does not stop the detach.
        }
    }

    /// <summary>What the parents take together (OR) and let others do together (AND): QEMU's cumulative permissions.</summary>
    public (BlockPermissions Perm, BlockPermissions Shared) CumulativePermissions()
    {
        var perm = BlockPermissions.None;
        var shared = BlockPermissions.All;
        foreach (var e in _parents)
        {
            perm |= e.Permissions;
            shared &= e.Shared;
        }
        return (perm, shared);
    }

    /// <summary>The driver's rule for what it takes on a child in <paramref name="role"/> given its parents' needs.</summary>
    internal virtual (BlockPermissions Perm, BlockPermissions Shared) ChildPermissions(ChildRole role, BlockPermissions perm, BlockPermissions shared) =>
        PermissionRules.Default(role, perm, shared, Settings.ReadOnly);

    private (BlockPermissions Perm, BlockPermissions Shared) PermissionsFor(ChildRole role, BlockNode child)
    {
        var (perm, shared) = CumulativePermissions();
        var r = ChildPermissions(role, perm, shared);
        if (child.Settings.ForceShare)
            r.Shared = BlockPermissions.All;
        return r;
    }

    /// <summary>Driver hook, first phase: check (and reserve) what the new permissions need, e.g. image locks. May throw.</summary>
    internal virtual void PreparePermissions(BlockPermissions perm, BlockPermissions shared) { }

    /// <summary>Driver hook: the new permissions are in force.</summary>
    internal virtual void CommitPermissions(BlockPermissions perm, BlockPermissions shared) { }

    /// <summary>Driver hook: the change failed; back to the committed permissions.</summary>
    internal virtual void AbortPermissions() { }

    /// <summary>
    /// Recomputes permissions from this node down as QEMU's bdrv_refresh_perms: nodes in topological order (parents
    /// first), each checked for conflicts among its parents, then prepared by its driver, then its children's edges
    /// recomputed. Any failure restores every edge and aborts every driver; success commits all.
    /// </summary>
    public void RefreshPermissions()
    {
        var order = new List<BlockNode>();
        TopologicalOrder(this, new HashSet<BlockNode>(ReferenceEqualityComparer.Instance), order);
        order.Reverse();
        var changed = new List<(BlockEdge Edge, BlockPermissions Perm, BlockPermissions Shared)>();
        var prepared = new List<BlockNode>();
        try
        {
            foreach (var node in order)
            {
                node.CheckParentConflicts();
                var (perm, shared) = node.CumulativePermissions();
                node.PreparePermissions(perm, shared);
                prepared.Add(node);
                for (int i = node._children.Count - 1; i >= 0; i--) // QEMU keeps children newest first
                {
                    var e = node._children[i];
                    var (cperm, cshared) = node.PermissionsFor(e.ChildRole, e.Child);
                    if (cperm != e.Permissions || cshared != e.Shared)
                    {
                        changed.Add((e, e.Permissions, e.Shared));
                        e.Permissions = cperm;
                        e.Shared = cshared;
                    }
                }
            }
        }
        catch
        {
            for (int i = changed.Count - 1; i >= 0; i--)
            {
                changed[i].Edge.Permissions = changed[i].Perm;
                changed[i].Edge.Shared = changed[i].Shared;
            }
            for (int i = prepared.Count - 1; i >= 0; i--)
                prepared[i].AbortPermissions();
            throw;
        }
        foreach (var node in order)
        {
            var (perm, shared) = node.CumulativePermissions();
            node.CommitPermissions(perm, shared);
        }
    }

    /// <summary>Post-order DFS over children newest first; reversed, it lists every node before its children.</summary>
    private static void TopologicalOrder(BlockNode node, HashSet<BlockNode> found, List<BlockNode> postOrder)
    {
        if (!found.Add(node))
            return;
        for (int i = node._children.Count - 1; i >= 0; i--)
            TopologicalOrder(node._children[i].Child, found, postOrder);
        postOrder.Add(node);
    }

    /// <summary>
    /// QEMU's rule, checked over every ordered pair of parents (newest first): what one parent takes must be shared by
    /// each other one.
    /// </summary>
    private void CheckParentConflicts()
    {
        for (int i = _parents.Count - 1; i >= 0; i--)
        {
            var a = _parents[i];
            for (int j = _parents.Count - 1; j >= 0; j--)
            {
                var b = _parents[j];
                if (i == j)
                    continue;
                var conflict = b.Permissions & ~a.Shared;
                if (conflict != 0)
                    throw PermissionConflict(conflict, b.Parent, b.Role, a.Parent, a.Role);
            }
        }
    }

    private BlockException PermissionConflict(BlockPermissions perms, IBlockParent requiredBy, string requiredRole, IBlockParent unsharedBy, string unsharedRole) =>
        new($"Permission conflict on node '{NodeName}': permissions '{BlockPermissionNames.Describe(perms)}' are both required by " +
            $"{Uses(requiredBy, requiredRole)} and unshared by {Uses(unsharedBy, unsharedRole)}.");

    private string Uses(IBlockParent parent, string role) => $"{parent.Description} (uses node '{NodeName}' as '{role}' child)";

    /// <summary>
    /// QEMU's bdrv_reopen_set_read_only(true) after an external snapshot: the node (and its file child, when nothing
    /// else uses it) take no more writes; the refreshed permissions drop write and resize on the file, and its locks
    /// follow. Call drained and flushed. Permissions only shrink, so like QEMU a lock that cannot be dropped is ignored.
    /// </summary>
    internal void ReopenReadOnly()
    {
        Settings = Settings with { ReadOnly = true };
        MarkProtocolChildrenReadOnly(this);
        try
        {
            RefreshPermissions();
        }
        catch (BlockException)
        {
        }
    }

    /// <summary>The reopen reaches down through file children and filters (blkdebug's image) that nothing else uses.</summary>
    private static void MarkProtocolChildrenReadOnly(BlockNode node)
    {
        foreach (var e in node._children)
        {
            if (e.Role is "file" or "image" && e.Child.Parents.Count == 1)
            {
                e.Child.Settings = e.Child.Settings with { ReadOnly = true };
                MarkProtocolChildrenReadOnly(e.Child);
            }
        }
    }

    /// <summary>Closes the driver; the graph detaches children first.</summary>
    public abstract ValueTask CloseAsync();

    ValueTask IAsyncDisposable.DisposeAsync() => CloseAsync();

    // ---- data path ---------------------------------------------------------------------------------

    private void CheckWritable()
    {
        if (IsReadOnly)
            throw new ImageException($"Node '{NodeName}' is read-only");
    }

    public ValueTask ReadAsync(Memory<byte> buffer, long offset, CancellationToken ct = default) => Inner.ReadAsync(buffer, offset, ct);

    public ValueTask WriteAsync(ReadOnlyMemory<byte> data, long offset, WriteFlags flags = WriteFlags.None, CancellationToken ct = default)
    {
        CheckWritable();
        if (Settings.DetectZeroes != DetectZeroes.Off && !data.Span.ContainsAnyExcept((byte)0))
        {
            var zf = (flags & WriteFlags.Fua) != 0 ? ZeroFlags.Fua : ZeroFlags.None;
            if (Settings.DetectZeroes == DetectZeroes.Unmap && Settings.Unmap)
                zf |= ZeroFlags.MayUnmap;
            RecordWrite(offset, data.Length);
            return Inner.WriteZeroesAsync(offset, data.Length, zf, ct);
        }
        RecordWrite(offset, data.Length);
        return Inner.WriteAsync(data, offset, flags, ct);
    }

    public ValueTask WriteZeroesAsync(long offset, long length, ZeroFlags flags = ZeroFlags.None, CancellationToken ct = default)
    {
        CheckWritable();
        if (!Settings.Unmap)
            flags &= ~ZeroFlags.MayUnmap;
        RecordWrite(offset, length);
        return Inner.WriteZeroesAsync(offset, length, flags, ct);
    }

    public ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default)
    {
        CheckWritable();
        // discard=ignore (QEMU's default for blockdev-add): discards succeed and do nothing.
        if (!Settings.Unmap)
            return ValueTask.CompletedTask;
        RecordWrite(offset, length);
        return Inner.DiscardAsync(offset, length, ct);
    }

    public ValueTask FlushAsync(CancellationToken ct = default) => Inner.FlushAsync(ct);

    /// <summary>
    /// bdrv_set_dirty for nodes whose driver keeps no bitmaps of its own (a qcow2 image records its writes itself,
    /// and its node's own set stays empty; a file node's storage tells it of every write, its parents' included).
    /// </summary>
    private void RecordWrite(long offset, long length)
    {
        if (!StorageRecordsWrites && _ownBitmaps.HasEnabled)
            _ownBitmaps.RecordWrite(offset, length);
    }

    /// <summary>Whether the node's storage reports every write to its bitmaps itself (a file node).</summary>
    private protected virtual bool StorageRecordsWrites => false;

    /// <summary>A length in whole 512-byte sectors, rounded up, as QEMU counts a node's (bdrv_getlength).</summary>
    public static long WholeSectors(long bytes) => (bytes + 511) / 512 * 512;

    public ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken ct = default) =>
        Inner.GetBlockStatusAsync(offset, length, ct);

    public async ValueTask ResizeAsync(long newSize, bool allowShrink, Preallocation prealloc = Preallocation.Off, CancellationToken ct = default)
    {
        CheckWritable();
        await Inner.ResizeAsync(newSize, allowShrink, prealloc, ct).ConfigureAwait(false);
        // bdrv_dirty_bitmap_truncate for the node's own bitmaps (a qcow2 image resizes its own); whole sectors, as bdrv_getlength.
        foreach (var b in _ownBitmaps.All)
            b.Resize(WholeSectors(Size));
    }

    public override string ToString() => $"{Driver} node '{NodeName}'";
}
