using Strata.Images;
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

    public IReadOnlyList<BlockEdge> Parents => _parents;
    public IReadOnlyList<BlockEdge> Children => _children;
    public BlockNode? FileChild => ChildFor("file");
    public BlockNode? BackingChild => ChildFor("backing");

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

    /// <summary>The driver image itself, for queries (e.g. a Qcow2Image's header).</summary>
    public IImage DriverImage => Inner;

    // ---- graph ---------------------------------------------------------------------------------

    /// <summary>
    /// Attaches a parent, checking QEMU's permission rule: what the new parent takes must be shared by every
    /// other parent, and what it does not share must not be taken by any.
    /// </summary>
    public BlockEdge AddParent(IBlockParent parent, string role, BlockPermissions perm, BlockPermissions shared)
    {
        if (Settings.ForceShare)
            shared = BlockPermissions.All;
        foreach (var other in _parents)
        {
            // QEMU reports what an existing parent needs and the new one refuses first.
            var conflict = other.Permissions & ~shared;
            if (conflict != 0)
                throw PermissionConflict(conflict, other.Parent, other.Role, parent, role);
            conflict = perm & ~other.Shared;
            if (conflict != 0)
                throw PermissionConflict(conflict, parent, role, other.Parent, other.Role);
        }
        var edge = new BlockEdge(parent, this, role, perm, shared);
        _parents.Add(edge);
        if (parent is BlockNode p)
            p._children.Add(edge);
        return edge;
    }

    private BlockException PermissionConflict(BlockPermissions perms, IBlockParent requiredBy, string requiredRole, IBlockParent unsharedBy, string unsharedRole) =>
        new($"Permission conflict on node '{NodeName}': permissions '{BlockPermissionNames.Describe(perms)}' are both required by " +
            $"{Uses(requiredBy, requiredRole)} and unshared by {Uses(unsharedBy, unsharedRole)}.");

    private string Uses(IBlockParent parent, string role) => $"{parent.Description} (uses node '{NodeName}' as '{role}' child)";

    internal void RemoveParent(BlockEdge edge)
    {
        _parents.Remove(edge);
        if (edge.Parent is BlockNode p)
            p._children.Remove(edge);
    }

    /// <summary>
    /// QEMU's bdrv_reopen_set_read_only(true) after an external snapshot: the node (and its file child) take no more
    /// writes, and drop the write and resize permissions on the file. Call drained and flushed.
    /// </summary>
    internal void ReopenReadOnly()
    {
        Settings = Settings with { ReadOnly = true };
        foreach (var e in _children)
        {
            if (e.Role != "file")
                continue;
            e.Permissions &= ~(BlockPermissions.Write | BlockPermissions.Resize);
            if (e.Child.Parents.Count == 1)
                e.Child.Settings = e.Child.Settings with { ReadOnly = true };
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
            return Inner.WriteZeroesAsync(offset, data.Length, zf, ct);
        }
        return Inner.WriteAsync(data, offset, flags, ct);
    }

    public ValueTask WriteZeroesAsync(long offset, long length, ZeroFlags flags = ZeroFlags.None, CancellationToken ct = default)
    {
        CheckWritable();
        if (!Settings.Unmap)
            flags &= ~ZeroFlags.MayUnmap;
        return Inner.WriteZeroesAsync(offset, length, flags, ct);
    }

    public ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default)
    {
        CheckWritable();
        // discard=ignore (QEMU's default for blockdev-add): discards succeed and do nothing.
        return Settings.Unmap ? Inner.DiscardAsync(offset, length, ct) : ValueTask.CompletedTask;
    }

    public ValueTask FlushAsync(CancellationToken ct = default) => Inner.FlushAsync(ct);

    public ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken ct = default) =>
        Inner.GetBlockStatusAsync(offset, length, ct);

    public ValueTask ResizeAsync(long newSize, bool allowShrink, Preallocation prealloc = Preallocation.Off, CancellationToken ct = default)
    {
        CheckWritable();
        return Inner.ResizeAsync(newSize, allowShrink, prealloc, ct);
    }

    public override string ToString() => $"{Driver} node '{NodeName}'";
}
