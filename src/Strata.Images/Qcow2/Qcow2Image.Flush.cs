using System.Buffers.Binary;
using Strata.Images.Storage;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

public sealed partial class Qcow2Image
{
    public async ValueTask FlushAsync(CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_readOnly)
            return;
        await _lock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            _file.Event(DebugEvent.FlushToOs);
            await FlushMetadataLockedAsync(ct).ConfigureAwait(false);
        }
        finally
        {
            Unlock();
        }
    }

    /// <summary>
    /// Writes cached metadata in the order that keeps the image consistent after a crash at any point
    /// (leaks at worst), and makes all completed writes durable:
    /// refcount blocks → flush → L2 tables → flush → L1 entries → flush → then the clusters whose last
    /// reference was dropped are freed (their refcount blocks go out with a final flush).
    /// </summary>
    private async ValueTask FlushMetadataLockedAsync(CancellationToken ct)
    {
        // 1. New clusters must be counted on disk before anything points at them. With lazy refcounts
        //    (dirty bit set) refcounts are rebuilt after a crash, so they may stay in memory.
        if (_rc.IsDirty && (!_dirtyBitSet || _rc.Blocks.DirtyCount >= _rc.Blocks.Capacity))
            await _rc.WriteDirtyAsync(ct).ConfigureAwait(false);

        if (_l2Cache.HasDirty)
        {
            // 2. Guest data and refcounts durable before the L2 entries that reference them.
            await _file.FlushAsync(ct).ConfigureAwait(false);
            await _l2Cache.WriteDirtyAsync(ct).ConfigureAwait(false);
        }
        if (_dirtyL1.Count > 0)
        {
            // 3. New L2 tables must be on disk before the L1 points at them.
            await _file.FlushAsync(ct).ConfigureAwait(false);
            await WriteL1EntriesAsync(ct).ConfigureAwait(false);
        }
        // What QEMU's flush does once the format's caches are written: the file's own flush. (Rules a blkdebug file
        // arms on flush_to_disk take effect after this flush in QEMU, so the event comes after it here too.)
        await _file.FlushAsync(ct).ConfigureAwait(false);
        _file.Event(DebugEvent.FlushToDisk);

        // 4. Only now is no on-disk table referencing the clusters we dropped: free them, once the reads and
        //    writes that looked up their mapping before the lock was taken have finished with them.
        if (_rc.HasPendingFrees)
        {
            await WaitHostIoDrainedAsync().ConfigureAwait(false);
            await _rc.ApplyPendingFreesAsync(OnClusterFreed, ct).ConfigureAwait(false);
            if (!_dirtyBitSet)
            {
                await _rc.WriteDirtyAsync(ct).ConfigureAwait(false);
                await _file.FlushAsync(ct).ConfigureAwait(false);
            }
        }
    }

    private void BeginHostIo() => Interlocked.Increment(ref _hostIoInFlight);

    private void EndHostIo()
    {
        if (Interlocked.Decrement(ref _hostIoInFlight) == 0)
            Volatile.Read(ref _hostIoDrained)?.TrySetResult();
    }

    /// <summary>
    /// Waits until no lock-free host I/O is running. Called with the lock held: no new such I/O can start
    /// (its mapping needs the lock), so the count only goes down.
    /// </summary>
    private async ValueTask WaitHostIoDrainedAsync()
    {
        if (Volatile.Read(ref _hostIoInFlight) == 0)
            return;
        var drained = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Volatile.Write(ref _hostIoDrained, drained);
        if (Volatile.Read(ref _hostIoInFlight) != 0)
            await drained.Task.ConfigureAwait(false);
        Volatile.Write(ref _hostIoDrained, null);
    }

    private void OnClusterFreed(long host)
    {
        // A freed table must never be written back from the caches, nor served if the cluster is reused.
        _l2Cache.Discard(host);
        _rc.Blocks.Discard(host);
        _metadata.Remove(host, _cs);
    }

    private async ValueTask WriteL1EntriesAsync(CancellationToken ct)
    {
        foreach (var (data, offset) in DirtyL1Runs())
        {
            _file.Event(DebugEvent.L1Update);
            await _file.WriteAsync(data, offset, ct).ConfigureAwait(false);
        }
        _dirtyL1.Clear();
    }

    /// <summary>The dirty L1 entries as writes: runs of neighbouring entries (up to 512) go out as one.</summary>
    private List<(ReadOnlyMemory<byte> Data, long Offset)> DirtyL1Runs()
    {
        var runs = new List<(ReadOnlyMemory<byte>, long)>();
        var list = new List<int>(_dirtyL1);
        int i = 0;
        while (i < list.Count)
        {
            int start = list[i], n = 1;
            while (i + n < list.Count && list[i + n] == start + n && n < 512)
                n++;
            var buf = new byte[n * 8];
            for (int k = 0; k < n; k++)
                BinaryPrimitives.WriteUInt64BigEndian(buf.AsSpan(k * 8), _l1[start + k]);
            runs.Add((buf, _h.L1TableOffset + start * 8L));
            i += n;
        }
        return runs;
    }

    /// <summary>Rebuilds refcounts of an image left dirty by a crash with lazy refcounts (QEMU does this on open).</summary>
    private async ValueTask RepairDirtyAsync(CancellationToken ct)
    {
        await Qcow2Check.RepairAsync(this, Qcow2RepairMode.All, ct).ConfigureAwait(false);
        _h.IncompatibleFeatures &= ~IncompatDirty;
        await WriteIncompatibleFeaturesAsync(ct).ConfigureAwait(false);
        _dirtyBitSet = false;
    }
}
