using Strata.Images.Format;
using Strata.Images.Storage;

namespace Strata.Block.Jobs;

/// <summary>
/// A block backend seen as the byte store of a format being created: blockdev-create writes a new image through
/// the node the user named (and whatever driver that node has), as QEMU's create functions write through a
/// BlockBackend on it. The backend is the caller's; disposing this does not release it.
/// </summary>
internal sealed class BackendStorage(BlockBackend backend, bool keepContentOnTruncateToZero) : IStorage
{
    // QEMU's qcow2_co_create writes over the node as it is, while Qcow2Creator begins with the truncation that a
    // fresh qemu-img file has: that first truncation to zero is skipped, so the bytes past the new image stay.
    private bool _skipTruncate = keepContentOnTruncateToZero;

    public string Name => backend.Root.FileName;

    public bool IsReadOnly => backend.IsReadOnly;

    public int RequestAlignment => 1; // the node's own layers bounce unaligned requests

    public long Length => backend.Size;

    public long AllocatedBytes => backend.Root.Storage.AllocatedBytes;

    public ValueTask ReadAsync(Memory<byte> buffer, long offset, CancellationToken ct = default)
    {
        // Reads past the end of the node return zeroes, as the contract of IStorage says.
        long size = backend.Size;
        if (offset >= size)
        {
            buffer.Span.Clear();
            return ValueTask.CompletedTask;
        }

        if (offset + buffer.Length > size)
        {
            int inside = (int)(size - offset);
            buffer.Span[inside..].Clear();
            return backend.ReadAsync(buffer[..inside], offset, ct);
        }

        return backend.ReadAsync(buffer, offset, ct);
    }

    public async ValueTask WriteAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken ct = default)
    {
        // A BlockBackend does not write past the end: grow first, as QEMU's "allow write beyond EOF" lets the file do.
        long end = offset + data.Length;
        if (end > backend.Size)
            await backend.ResizeAsync(end, allowShrink: false, ct: ct).ConfigureAwait(false);
        await backend.WriteAsync(data, offset, WriteFlags.None, ct).ConfigureAwait(false);
    }

    public async ValueTask WriteZeroesAsync(long offset, long length, bool mayUnmap, CancellationToken ct = default)
    {
        long end = offset + length;
        if (end > backend.Size)
            await backend.ResizeAsync(end, allowShrink: false, ct: ct).ConfigureAwait(false);
        await backend.WriteZeroesAsync(offset, length, mayUnmap ? ZeroFlags.MayUnmap : ZeroFlags.None, ct).ConfigureAwait(false);
    }

    public ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default) => backend.DiscardAsync(offset, length, ct);

    public ValueTask FlushAsync(CancellationToken ct = default) => backend.FlushAsync(ct);

    public ValueTask SetLengthAsync(long length, Preallocation prealloc = Preallocation.Off, CancellationToken ct = default)
    {
        if (_skipTruncate && length == 0)
        {
            _skipTruncate = false;
            return ValueTask.CompletedTask;
        }

        _skipTruncate = false;
        return backend.ResizeAsync(length, allowShrink: true, prealloc, ct);
    }

    public async ValueTask<StorageExtent> GetExtentAsync(long offset, long length, CancellationToken ct = default)
    {
        if (offset >= backend.Size)
            return new StorageExtent(false, 0);
        var s = await backend.GetBlockStatusAsync(offset, Math.Min(length, backend.Size - offset), ct).ConfigureAwait(false);
        return new StorageExtent(s.State == BlockState.Data || s.Allocated, s.Length);
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
