using Strata.Images;
using Strata.Images.Format;
using Strata.Images.Storage;

namespace Strata.Block;

/// <summary>
/// A user's handle on a node (an NBD export, a job): holds the permissions it needs on its root node, counts the
/// requests in flight so that graph changes can drain them, and follows its root when a snapshot or mirror puts
/// another node in its place. Its data path is <see cref="IImage"/>, so protocol servers need nothing else.
/// </summary>
public sealed class BlockBackend : IImage, IBlockParent
{
    private BlockEdge _edge;
    private int _inFlight;
    private int _drainDepth;
    private TaskCompletionSource? _idle;          // completed when _inFlight reaches 0 during a drain
    private TaskCompletionSource _resumed = Done(); // completed while not drained

    public BlockBackend(string description, BlockNode root, BlockPermissions perm, BlockPermissions shared)
    {
        Description = description;
        _edge = root.AddParent(this, "root", perm, shared);
    }

    public string Description { get; }
    public BlockNode Root => _edge.Child;
    public BlockPermissions Permissions => _edge.Permissions;

    private static TaskCompletionSource Done()
    {
        var t = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        t.SetResult();
        return t;
    }

    /// <summary>Moves this backend (and its permissions) to another node. Call while drained.</summary>
    public void ReplaceRoot(BlockNode newRoot)
    {
        var old = _edge;
        old.Release();
        try
        {
            _edge = newRoot.AddParent(this, "root", old.Permissions, old.Shared);
        }
        catch
        {
            _edge = old.Child.AddParent(this, "root", old.Permissions, old.Shared);
            throw;
        }
    }

    /// <summary>Detaches from the root node (the backend is unusable afterwards).</summary>
    public void Release() => _edge.Release();

    // ---- drain -----------------------------------------------------------------------------------

    /// <summary>
    /// Waits for every request in flight to finish and holds new ones back until the returned handle is disposed.
    /// Drains nest.
    /// </summary>
    public async ValueTask<IAsyncDisposable> DrainAsync(CancellationToken ct = default)
    {
        TaskCompletionSource idle;
        lock (this)
        {
            if (_drainDepth++ == 0)
                _resumed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            idle = _idle ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            if (_inFlight == 0)
                idle.TrySetResult();
        }
        await idle.Task.WaitAsync(ct).ConfigureAwait(false);
        return new DrainHandle(this);
    }

    private void EndDrain()
    {
        lock (this)
        {
            if (--_drainDepth == 0)
            {
                _idle = null;
                _resumed.TrySetResult();
            }
        }
    }

    private sealed class DrainHandle(BlockBackend backend) : IAsyncDisposable
    {
        private int _done;

        public ValueTask DisposeAsync()
        {
            if (Interlocked.Exchange(ref _done, 1) == 0)
                backend.EndDrain();
            return ValueTask.CompletedTask;
        }
    }

    private ValueTask BeginAsync(CancellationToken ct)
    {
        lock (this)
        {
            if (_drainDepth == 0)
            {
                _inFlight++;
                return ValueTask.CompletedTask;
            }
        }
        return WaitAndBeginAsync(ct);
    }

    private async ValueTask WaitAndBeginAsync(CancellationToken ct)
    {
        while (true)
        {
            Task resumed;
            lock (this)
            {
                if (_drainDepth == 0)
                {
                    _inFlight++;
                    return;
                }
                resumed = _resumed.Task;
            }
            await resumed.WaitAsync(ct).ConfigureAwait(false);
        }
    }

    private void End()
    {
        lock (this)
        {
            if (--_inFlight == 0)
                _idle?.TrySetResult();
        }
    }

    // ---- data path -----------------------------------------------------------------------------------

    public string FormatName => Root.FormatName;
    public string FileName => Root.FileName;
    public IStorage Storage => Root.Storage;
    public long Size => Root.Size;
    public bool IsReadOnly => Root.IsReadOnly || (_edge.Permissions & BlockPermissions.Write) == 0;
    public IImage? Backing => Root.Backing;
    public IImage FormatImage => Root.FormatImage;
    public string? BackingFileName => Root.BackingFileName;
    public string? BackingFormat => Root.BackingFormat;
    public int AllocationGranularity => Root.AllocationGranularity;

    private void CheckWrite()
    {
        if ((_edge.Permissions & BlockPermissions.Write) == 0)
            throw new ImageException($"{Description} is not writable");
    }

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask ReadAsync(Memory<byte> buffer, long offset, CancellationToken ct = default)
    {
        await BeginAsync(ct).ConfigureAwait(false);
        try { await Root.ReadAsync(buffer, offset, ct).ConfigureAwait(false); }
        finally { End(); }
    }

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask WriteAsync(ReadOnlyMemory<byte> data, long offset, WriteFlags flags = WriteFlags.None, CancellationToken ct = default)
    {
        CheckWrite();
        await BeginAsync(ct).ConfigureAwait(false);
        try { await Root.WriteAsync(data, offset, flags, ct).ConfigureAwait(false); }
        finally { End(); }
    }

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask WriteZeroesAsync(long offset, long length, ZeroFlags flags = ZeroFlags.None, CancellationToken ct = default)
    {
        CheckWrite();
        await BeginAsync(ct).ConfigureAwait(false);
        try { await Root.WriteZeroesAsync(offset, length, flags, ct).ConfigureAwait(false); }
        finally { End(); }
    }

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default)
    {
        CheckWrite();
        await BeginAsync(ct).ConfigureAwait(false);
        try { await Root.DiscardAsync(offset, length, ct).ConfigureAwait(false); }
        finally { End(); }
    }

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask FlushAsync(CancellationToken ct = default)
    {
        await BeginAsync(ct).ConfigureAwait(false);
        try { await Root.FlushAsync(ct).ConfigureAwait(false); }
        finally { End(); }
    }

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken ct = default)
    {
        await BeginAsync(ct).ConfigureAwait(false);
        try { return await Root.GetBlockStatusAsync(offset, length, ct).ConfigureAwait(false); }
        finally { End(); }
    }

    public async ValueTask ResizeAsync(long newSize, bool allowShrink, Preallocation prealloc = Preallocation.Off, CancellationToken ct = default)
    {
        await BeginAsync(ct).ConfigureAwait(false);
        try { await Root.ResizeAsync(newSize, allowShrink, prealloc, ct).ConfigureAwait(false); }
        finally { End(); }
    }

    /// <summary>Releases the root (the node stays in the graph).</summary>
    public ValueTask DisposeAsync()
    {
        Release();
        return ValueTask.CompletedTask;
    }
}
