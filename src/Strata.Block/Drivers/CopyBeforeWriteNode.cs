using Strata.Block.Jobs;
using Strata.Images;
using Strata.Images.Bitmaps;
using Strata.Images.Format;
using Strata.Images.Storage;

namespace Strata.Block.Drivers;

/// <summary>
/// QEMU's copy-before-write filter (block/copy-before-write.c): sits above a backup's source, passes reads through,
/// and before a write, zero or discard reaches the source it has block-copy put the old data of those clusters in
/// the target. A failed copy breaks the guest write (on-cbw-error=break-guest-write, QEMU's default).
/// </summary>
public sealed class CopyBeforeWriteNode : BlockNode
{
    private readonly BlockNode _source;
    private readonly Passthrough _inner;

    internal CopyBeforeWriteNode(string name, bool autoNamed, BlockNode source, BlockCopy copy)
        : base(name, "copy-before-write", new BlockNodeSettings(), autoNamed)
    {
        _source = source;
        Copy = copy;
        _inner = new Passthrough(this, source);
        Access = new DirtyBitmap(source.Size, (uint)copy.ClusterSize);
        Access.SetAll();
        Done = new DirtyBitmap(source.Size, (uint)copy.ClusterSize);
    }

    public BlockCopy Copy { get; }

    /// <summary>
    /// The filter's own (anonymous, disabled) bitmaps as QEMU's cbw_open makes them, listed on the node by queries:
    /// what a snapshot reader may still read (all of it, without snapshot-access), and what copy-before-write copied.
    /// </summary>
    public DirtyBitmap Access { get; }

    /// <inheritdoc cref="Access"/>
    public DirtyBitmap Done { get; }

    /// <summary>cbw_do_copy_before_write: the clusters of a guest request, once copied, are marked done.</summary>
    private async ValueTask CopyBeforeWriteAsync(long offset, long length, CancellationToken ct)
    {
        await Copy.CopyBeforeWriteAsync(offset, length, ct).ConfigureAwait(false);
        long start = offset / Copy.ClusterSize * Copy.ClusterSize;
        long end = Math.Min(Size, (offset + length + Copy.ClusterSize - 1) / Copy.ClusterSize * Copy.ClusterSize);
        lock (Done)
            Done.SetRange(start, end - start);
    }

    /// <summary>While its users move over from the source, the filter lets them share the source as before.</summary>
    internal bool Appending { get; set; }

    public override string FileName => _source.FileName;

    /// <summary>Where the filter's writes go: its file child (the source, or the filter of a later backup of it).</summary>
    private IImage WriteTarget => FileChild ?? _source;

    /// <summary>
    /// bdrv_replace_node for the filter's file edge: a later backup's filter goes between this one and the source.
    /// Call drained; permissions are refreshed by the caller once the graph is whole again.
    /// </summary>
    internal void ReplaceFile(BlockNode newChild)
    {
        Appending = true;
        foreach (var e in Children.ToArray())
            if (e.Role == "file")
                e.Release();
        AttachChild(newChild, "file", ChildRole.Filtered);
    }

    protected override IImage Inner => _inner;

    public override ValueTask CloseAsync() => ValueTask.CompletedTask;

    /// <summary>
    /// cbw_child_perm: the target is written (others may do anything but resize it); the source is taken as a filter
    /// does, with consistent reads when writing and nobody else writing or resizing it.
    /// </summary>
    internal override (BlockPermissions Perm, BlockPermissions Shared) ChildPermissions(ChildRole role, BlockPermissions perm, BlockPermissions shared)
    {
        if ((role & ChildRole.Filtered) == 0)
            return (BlockPermissions.Write, BlockPermissions.All & ~BlockPermissions.Resize);
        var r = base.ChildPermissions(role, perm, shared);
        if (Parents.Count > 0 && !Appending)
        {
            if ((perm & BlockPermissions.Write) != 0)
                r.Perm |= BlockPermissions.ConsistentRead;
            r.Shared &= ~(BlockPermissions.Write | BlockPermissions.Resize);
        }
        return r;
    }

    /// <summary>The filter's data path: reads as the source; changes copy the old data out first.</summary>
    private sealed class Passthrough(CopyBeforeWriteNode node, BlockNode source) : IImage
    {
        public string FormatName => "copy-before-write";
        public string FileName => source.FileName;
        public IStorage Storage => source.Storage;
        public long Size => source.Size;
        public bool IsReadOnly => source.IsReadOnly;
        public IImage? Backing => null;
        public IImage FormatImage => source.FormatImage;
        public string? BackingFileName => null;
        public string? BackingFormat => null;
        public int AllocationGranularity => source.AllocationGranularity;

        public ValueTask ReadAsync(Memory<byte> buffer, long offset, CancellationToken ct = default) => source.ReadAsync(buffer, offset, ct);

        public async ValueTask WriteAsync(ReadOnlyMemory<byte> data, long offset, WriteFlags flags = WriteFlags.None, CancellationToken ct = default)
        {
            await node.CopyBeforeWriteAsync(offset, data.Length, ct).ConfigureAwait(false);
            await node.WriteTarget.WriteAsync(data, offset, flags, ct).ConfigureAwait(false);
        }

        public async ValueTask WriteZeroesAsync(long offset, long length, ZeroFlags flags = ZeroFlags.None, CancellationToken ct = default)
        {
            await node.CopyBeforeWriteAsync(offset, length, ct).ConfigureAwait(false);
            await node.WriteTarget.WriteZeroesAsync(offset, length, flags, ct).ConfigureAwait(false);
        }

        public async ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default)
        {
            await node.CopyBeforeWriteAsync(offset, length, ct).ConfigureAwait(false);
            await node.WriteTarget.DiscardAsync(offset, length, ct).ConfigureAwait(false);
        }

        public ValueTask FlushAsync(CancellationToken ct = default) => source.FlushAsync(ct);

        /// <summary>
        /// The source's status with its backing chain resolved: the filter has no backing of its own, so a range its
        /// source leaves to a backing file must not look like a hole to readers of the filter (NBD clients).
        /// </summary>
        public async ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken ct = default)
        {
            var s = await source.GetBlockStatusAsync(offset, length, ct).ConfigureAwait(false);
            if (s.State != BlockState.Unallocated)
                return s;
            long len = Math.Clamp(s.Length, 1, length);
            for (var layer = source.BackingChild; layer is not null && offset < layer.Size; layer = layer.BackingChild)
            {
                len = Math.Min(len, layer.Size - offset);
                var b = await layer.GetBlockStatusAsync(offset, len, ct).ConfigureAwait(false);
                len = Math.Clamp(b.Length, 1, len);
                if (b.State != BlockState.Unallocated)
                    return new BlockStatus(b.State, len);
            }
            return new BlockStatus(BlockState.Zero, len);
        }

        public ValueTask ResizeAsync(long newSize, bool allowShrink, Preallocation prealloc = Preallocation.Off, CancellationToken ct = default) =>
            throw new ImageException("Cannot resize a node under a backup job");

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
