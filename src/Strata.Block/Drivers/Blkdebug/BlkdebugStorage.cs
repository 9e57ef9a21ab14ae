using System.Runtime.InteropServices;
using Strata.Images.Storage;

namespace Strata.Block.Drivers.Blkdebug;

/// <summary>
/// The blkdebug node's bytes: its image child's storage, with requests failed as the rules say and the format's events
/// fed to the state machine. Like QEMU's generic layer, a flush reaches the rules (and the child) only when something
/// was written since the last successful one.
/// </summary>
internal sealed class BlkdebugStorage : IStorage, IDebugEventSink
{
    private readonly IStorage _inner;
    private readonly BlkdebugRules _rules;
    private long _writeGen;
    private long _flushedGen;

    public BlkdebugStorage(IStorage inner, BlkdebugRules rules, string name, int align)
    {
        _inner = inner;
        _rules = rules;
        Name = name;
        RequestAlignment = Math.Max(align, inner.RequestAlignment);
    }

    public string Name { get; }
    public bool IsReadOnly => _inner.IsReadOnly;
    public int RequestAlignment { get; }
    public long Length => _inner.Length;
    /// <summary>Unknown (QEMU's blkdebug has no allocated size, nor has a format over it): queries leave actual-size out.</summary>
    public long AllocatedBytes => -1;

    public void OnDebugEvent(DebugEvent e) => _rules.OnEvent(e);

    /// <summary>rule_check: throws the rule's errno as an IOException (HResult = errno, message = strerror).</summary>
    private ValueTask CheckAsync(long offset, long length, BlkdebugIoType type)
    {
        var (errno, immediately) = _rules.Check(offset, length, type);
        if (errno == 0)
            return ValueTask.CompletedTask;
        var error = new IOException(Marshal.GetPInvokeErrorMessage(errno), errno);
        return immediately ? ValueTask.FromException(error) : FailLaterAsync(error);
    }

    /// <summary>Without immediately, QEMU completes the request with its error from the event loop.</summary>
    private static async ValueTask FailLaterAsync(IOException error)
    {
        await Task.Yield();
        throw error;
    }

    public async ValueTask ReadAsync(Memory<byte> buffer, long offset, CancellationToken ct = default)
    {
        await CheckAsync(offset, buffer.Length, BlkdebugIoType.Read).ConfigureAwait(false);
        await _inner.ReadAsync(buffer, offset, ct).ConfigureAwait(false);
    }

    public async ValueTask WriteAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken ct = default)
    {
        _rules.OnEvent(DebugEvent.Pwritev);
        try
        {
            await CheckAsync(offset, data.Length, BlkdebugIoType.Write).ConfigureAwait(false);
            await _inner.WriteAsync(data, offset, ct).ConfigureAwait(false);
        }
        finally
        {
            // As bdrv_aligned_pwritev: done and counted as a write whether it failed or not.
            Interlocked.Increment(ref _writeGen);
            _rules.OnEvent(DebugEvent.PwritevDone);
        }
    }

    public async ValueTask WriteZeroesAsync(long offset, long length, bool mayUnmap, CancellationToken ct = default)
    {
        _rules.OnEvent(DebugEvent.PwritevZero);
        try
        {
            await CheckAsync(offset, length, BlkdebugIoType.WriteZeroes).ConfigureAwait(false);
            await _inner.WriteZeroesAsync(offset, length, mayUnmap, ct).ConfigureAwait(false);
        }
        finally
        {
            // As bdrv_aligned_pwritev: done and counted as a write whether it failed or not.
            Interlocked.Increment(ref _writeGen);
            _rules.OnEvent(DebugEvent.PwritevDone);
        }
    }

    public async ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default)
    {
        try
        {
            await CheckAsync(offset, length, BlkdebugIoType.Discard).ConfigureAwait(false);
            await _inner.DiscardAsync(offset, length, ct).ConfigureAwait(false);
        }
        finally
        {
            Interlocked.Increment(ref _writeGen);
        }
    }

    public async ValueTask FlushAsync(CancellationToken ct = default)
    {
        long gen = Interlocked.Read(ref _writeGen);
        if (gen == Interlocked.Read(ref _flushedGen))
            return;
        await CheckAsync(0, 0, BlkdebugIoType.Flush).ConfigureAwait(false);
        await _inner.FlushAsync(ct).ConfigureAwait(false);
        Interlocked.Exchange(ref _flushedGen, gen);
    }

    public ValueTask SetLengthAsync(long length, Preallocation prealloc = Preallocation.Off, CancellationToken ct = default) =>
        _inner.SetLengthAsync(length, prealloc, ct);

    public async ValueTask<StorageExtent> GetExtentAsync(long offset, long length, CancellationToken ct = default)
    {
        await CheckAsync(offset, length, BlkdebugIoType.BlockStatus).ConfigureAwait(false);
        return await _inner.GetExtentAsync(offset, length, ct).ConfigureAwait(false);
    }

    /// <summary>The child node owns the storage below.</summary>
    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
