using Strata.Images.Format;
using Strata.Images.Storage;

namespace Strata.Nbd.Tests.Infrastructure;

/// <summary>
/// An <see cref="IImage"/> over another that can hold reads back (to force out-of-order replies), record the
/// flags it is called with, and fail operations with a chosen exception.
/// </summary>
public sealed class WrappedImage(IImage inner) : IImage
{
    private readonly object _gate = new();
    private readonly List<string> _calls = [];

    /// <summary>Reads starting at this offset wait for <see cref="ReleaseGate"/>.</summary>
    public long? GateOffset { get; set; }
    public TaskCompletionSource Gate { get; private set; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    public TaskCompletionSource GateReached { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Thrown by every write, zero, discard and flush while set.</summary>
    public Exception? Fail { get; set; }

    /// <summary>Thrown by reads (and block status) while set.</summary>
    public Exception? FailReads { get; set; }

    public void ReleaseGate() => Gate.TrySetResult();

    public IReadOnlyList<string> Calls
    {
        get
        {
            lock (_gate)
                return [.. _calls];
        }
    }

    private void Record(string call)
    {
        lock (_gate)
            _calls.Add(call);
    }

    public string FormatName => inner.FormatName;
    public string FileName => inner.FileName;
    public IStorage Storage => inner.Storage;
    public long Size => inner.Size;
    public bool IsReadOnly => inner.IsReadOnly;
    public IImage? Backing => inner.Backing;
    public string? BackingFileName => inner.BackingFileName;
    public string? BackingFormat => inner.BackingFormat;
    public int AllocationGranularity => inner.AllocationGranularity;

    public async ValueTask ReadAsync(Memory<byte> buffer, long offset, CancellationToken ct = default)
    {
        if (FailReads != null)
            throw FailReads;
        if (GateOffset == offset)
        {
            GateReached.TrySetResult();
            await Gate.Task;
        }
        await inner.ReadAsync(buffer, offset, ct);
    }

    public ValueTask WriteAsync(ReadOnlyMemory<byte> data, long offset, WriteFlags flags = WriteFlags.None, CancellationToken ct = default)
    {
        Record($"write {offset} {data.Length} {flags}");
        return Fail != null ? ValueTask.FromException(Fail) : inner.WriteAsync(data, offset, flags, ct);
    }

    public ValueTask WriteZeroesAsync(long offset, long length, ZeroFlags flags = ZeroFlags.None, CancellationToken ct = default)
    {
        Record($"zero {offset} {length} {flags}");
        return Fail != null ? ValueTask.FromException(Fail) : inner.WriteZeroesAsync(offset, length, flags, ct);
    }

    public ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default)
    {
        Record($"discard {offset} {length}");
        return Fail != null ? ValueTask.FromException(Fail) : inner.DiscardAsync(offset, length, ct);
    }

    public ValueTask FlushAsync(CancellationToken ct = default)
    {
        Record("flush");
        return Fail != null ? ValueTask.FromException(Fail) : inner.FlushAsync(ct);
    }

    public ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken ct = default) =>
        FailReads != null ? ValueTask.FromException<BlockStatus>(FailReads) : inner.GetBlockStatusAsync(offset, length, ct);

    public ValueTask ResizeAsync(long newSize, bool allowShrink, Preallocation prealloc = Preallocation.Off, CancellationToken ct = default) =>
        inner.ResizeAsync(newSize, allowShrink, prealloc, ct);

    public ValueTask DisposeAsync() => inner.DisposeAsync();
}
