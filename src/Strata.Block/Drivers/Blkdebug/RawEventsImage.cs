using Strata.Images;
using Strata.Images.Format;
using Strata.Images.Storage;

namespace Strata.Block.Drivers.Blkdebug;

/// <summary>
/// What a raw node passes to a blkdebug file: its requests unchanged, with the events QEMU's raw format and generic
/// layer report to the file (read_aio, write_aio, flush_to_os and flush_to_disk). Used only over a listening storage.
/// </summary>
internal sealed class RawEventsImage(IImage file, IDebugEventSink sink) : IImage
{
    public string FormatName => file.FormatName;
    public string FileName => file.FileName;
    public IStorage Storage => file.Storage;
    public long Size => file.Size;
    public bool IsReadOnly => file.IsReadOnly;
    public IImage? Backing => file.Backing;
    public IImage FormatImage => file.FormatImage;
    public string? BackingFileName => file.BackingFileName;
    public string? BackingFormat => file.BackingFormat;
    public int AllocationGranularity => file.AllocationGranularity;

    public ValueTask ReadAsync(Memory<byte> buffer, long offset, CancellationToken ct = default)
    {
        sink.OnDebugEvent(DebugEvent.ReadAio);
        return file.ReadAsync(buffer, offset, ct);
    }

    public ValueTask WriteAsync(ReadOnlyMemory<byte> data, long offset, WriteFlags flags = WriteFlags.None, CancellationToken ct = default)
    {
        sink.OnDebugEvent(DebugEvent.WriteAio);
        return file.WriteAsync(data, offset, flags, ct);
    }

    public ValueTask WriteZeroesAsync(long offset, long length, ZeroFlags flags = ZeroFlags.None, CancellationToken ct = default) =>
        file.WriteZeroesAsync(offset, length, flags, ct);

    public ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default) => file.DiscardAsync(offset, length, ct);

    public ValueTask FlushAsync(CancellationToken ct = default)
    {
        sink.OnDebugEvent(DebugEvent.FlushToOs);
        sink.OnDebugEvent(DebugEvent.FlushToDisk);
        return file.FlushAsync(ct);
    }

    public ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken ct = default) =>
        file.GetBlockStatusAsync(offset, length, ct);

    public ValueTask ResizeAsync(long newSize, bool allowShrink, Preallocation prealloc = Preallocation.Off, CancellationToken ct = default) =>
        file.ResizeAsync(newSize, allowShrink, prealloc, ct);

    /// <summary>The file is a node of its own.</summary>
    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
