using Strata.Images.Format;
using Strata.Images.Storage;

namespace Strata.Block.Drivers.Blkdebug;

/// <summary>
/// A node's guest view as the bytes blkdebug forwards to, for an image child that is a format (qcow2 over a file):
/// QEMU's blkdebug passes its requests to whatever node its image is, so over qcow2 it shows the virtual disk, not
/// the file's bytes.
/// </summary>
internal sealed class GuestViewStorage(BlockNode node) : IStorage
{
    public string Name => node.FileName;

    public bool IsReadOnly => node.IsReadOnly;

    public int RequestAlignment => 1; // the format bounces what its file needs aligned

    public long Length => node.Size;

    public long AllocatedBytes => node.Storage.AllocatedBytes;

    public ValueTask ReadAsync(Memory<byte> buffer, long offset, CancellationToken ct = default) => node.ReadAsync(buffer, offset, ct);

    public ValueTask WriteAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken ct = default) =>
        node.WriteAsync(data, offset, WriteFlags.None, ct);

    public ValueTask WriteZeroesAsync(long offset, long length, bool mayUnmap, CancellationToken ct = default) =>
        node.WriteZeroesAsync(offset, length, mayUnmap ? ZeroFlags.MayUnmap : ZeroFlags.None, ct);

    public ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default) => node.DiscardAsync(offset, length, ct);

    public ValueTask FlushAsync(CancellationToken ct = default) => node.FlushAsync(ct);

    public ValueTask SetLengthAsync(long length, Preallocation prealloc = Preallocation.Off, CancellationToken ct = default) =>
        node.ResizeAsync(length, allowShrink: true, prealloc, ct);

    public async ValueTask<StorageExtent> GetExtentAsync(long offset, long length, CancellationToken ct = default)
    {
        if (offset >= node.Size)
            return new StorageExtent(false, 0);
        var s = await node.GetBlockStatusAsync(offset, Math.Min(length, node.Size - offset), ct).ConfigureAwait(false);
        // A range this layer leaves to its backing file may hold data there: only what surely reads as zeroes is a hole.
        bool data = s.State == BlockState.Data || (s.State == BlockState.Unallocated && node.Backing is not null);
        return new StorageExtent(data, s.Length);
    }

    /// <summary>The node is the graph's; closing blkdebug does not close it.</summary>
    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
