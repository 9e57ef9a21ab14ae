using System.Buffers;
using Strata.Images.Storage;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

public sealed partial class Qcow2Image
{
    /// <summary>Guest clusters whose allocating write is in flight (data being written outside the lock), by cluster index.</summary>
    private readonly Dictionary<long, Task> _inflight = [];

    /// <summary>
    /// An allocating write of <see cref="Clusters"/> fresh clusters at <see cref="Host"/> for the guest clusters starting
    /// at <see cref="ClusterStart"/>: refcounts are taken and the clusters marked in flight under the lock; the data
    /// is written without it; the L2 entries are published under the lock afterwards.
    /// </summary>
    private sealed class AllocationPlan(long clusterStart, int clusters, long host, int length)
    {
        public long ClusterStart { get; } = clusterStart;
        public int Clusters { get; } = clusters;
        public long Host { get; } = host;
        public int Length { get; } = length;
        public TaskCompletionSource Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    private Task? InflightOverlapping(long offset, long length)
    {
        if (_inflight.Count == 0 || length == 0)
            return null;
        long first = offset >> _cb, last = (offset + length - 1) >> _cb;
        if (last - first + 1 <= _inflight.Count)
        {
            for (long c = first; c <= last; c++)
                if (_inflight.TryGetValue(c, out var t))
                    return t;
            return null;
        }
        foreach (var (c, t) in _inflight)
            if (c >= first && c <= last)
                return t;
        return null;
    }

    /// <summary>Takes the lock once no allocation is in flight in the range (metadata changes there must see its result).</summary>
    private async ValueTask LockRangeAsync(long offset, long length, CancellationToken ct)
    {
        while (true)
        {
            await _lock.WaitAsync(ct).ConfigureAwait(false);
            var busy = InflightOverlapping(offset, length);
            if (busy == null)
                return;
            Unlock();
            await busy.WaitAsync(ct).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Plans the allocation of the clusters the write starts in, when they hold nothing in this layer (unallocated or
    /// zero without host space): as many as the write covers within one L2 table, contiguous on the host like QEMU's
    /// handle_alloc. Returns null when the first cluster needs copy-on-write instead. Caller holds the lock.
    /// </summary>
    private async ValueTask<AllocationPlan?> PlanAllocationAsync(long offset, int length, CancellationToken ct)
    {
        long clusterStart = offset & ~((long)_cs - 1);
        var t = await GetL2ForWriteAsync(clusterStart, ct).ConfigureAwait(false);
        int idx = L2Index(clusterStart);
        int entries = 1 << _l2Bits;
        long end = offset + length;
        int k = 0;
        while (idx + k < entries && clusterStart + ((long)k << _cb) < end && IsFreshTarget(GetL2Entry(t, idx + k)))
            k++;
        if (k == 0)
            return null;
        await MarkDirtyIfLazyAsync(ct).ConfigureAwait(false);
        _file.Event(DebugEvent.ClusterAlloc);
        long host = await _rc.AllocateClustersAsync(k, ct).ConfigureAwait(false);
        int len = (int)Math.Min(length, clusterStart + ((long)k << _cb) - offset);
        var plan = new AllocationPlan(clusterStart, k, host, len);
        for (int j = 0; j < k; j++)
            _inflight[(clusterStart >> _cb) + j] = plan.Done.Task;
        return plan;
    }

    /// <summary>An entry whose cluster has no host space in this layer (and is not compressed).</summary>
    private bool IsFreshTarget(ulong entry)
    {
        if ((entry & (OflagCompressed | L2OffsetMask)) != 0)
            return false;
        return _ext || (entry & ~OflagZero) == 0;
    }

    private async ValueTask ExecuteAllocationAsync(AllocationPlan plan, ReadOnlyMemory<byte> data, long offset, CancellationToken ct)
    {
        try
        {
            int a = (int)(offset - plan.ClusterStart), b = a + data.Length;
            int regionEnd = plan.Clusters << _cb;
            // Copy-on-write edges: whole clusters, or whole subclusters with extended L2 (the others stay unallocated).
            int g = _ext ? 1 << _scBits : _cs;
            int headStart = a / g * g;
            int tailEnd = (int)Math.Min(regionEnd, ((long)b + g - 1) / g * g);
            await WriteWithCopyOnWriteAsync(plan, headStart, a, data, tailEnd, ct).ConfigureAwait(false);

            await _lock.WaitAsync(ct).ConfigureAwait(false);
            try
            {
                var t = await GetL2ForWriteAsync(plan.ClusterStart, ct).ConfigureAwait(false);
                int idx = L2Index(plan.ClusterStart);
                for (int j = 0; j < plan.Clusters; j++)
                {
                    ulong entry = (ulong)(plan.Host + ((long)j << _cb)) | OflagCopied;
                    if (!_ext)
                        SetL2(t, idx + j, entry);
                    else
                    {
                        int cStart = j << _cb;
                        uint mask = SubclusterMask(Math.Max(a, cStart) - cStart, Math.Min(b, cStart + _cs) - cStart);
                        ulong zero = GetL2Bitmap(t, idx + j) >> 32;
                        SetL2(t, idx + j, entry, mask | ((zero & ~(ulong)mask) << 32));
                    }
                }
                FinishPlan(plan);
                await FlushIfCachesFullAsync(ct).ConfigureAwait(false);
            }
            finally
            {
                Unlock();
            }
        }
        catch
        {
            await _lock.WaitAsync(CancellationToken.None).ConfigureAwait(false);
            try
            {
                if (_inflight.ContainsKey(plan.ClusterStart >> _cb))
                {
                    // Nothing references the new clusters: give them back.
                    _rc.DeferFree(plan.Host, (long)plan.Clusters << _cb);
                    FinishPlan(plan);
                }
            }
            finally
            {
                Unlock();
            }
            throw;
        }
    }

    private void FinishPlan(AllocationPlan plan)
    {
        for (int j = 0; j < plan.Clusters; j++)
            _inflight.Remove((plan.ClusterStart >> _cb) + j);
        plan.Done.TrySetResult();
    }

    /// <summary>
    /// Writes the data and the copy-on-write edges [headStart, a) and [b, tailEnd) read from this layer's old view
    /// (backing or zeroes). When the edges read as zero, the whole new range is zeroed instead and only the data
    /// written, as QEMU's handle_alloc_space does (so file length and allocation match QEMU's).
    /// </summary>
    private async ValueTask WriteWithCopyOnWriteAsync(AllocationPlan plan, int headStart, int a, ReadOnlyMemory<byte> data, int tailEnd, CancellationToken ct)
    {
        int b = a + data.Length;
        int headLen = a - headStart, tailLen = tailEnd - b;
        _file.Event(DebugEvent.WriteAio);
        if (headLen == 0 && tailLen == 0)
        {
            await _file.WriteAsync(data, plan.Host + a, ct).ConfigureAwait(false);
            return;
        }
        byte[] buf = ArrayPool<byte>.Shared.Rent(headLen + tailLen);
        try
        {
            var head = buf.AsMemory(0, headLen);
            var tail = buf.AsMemory(headLen, tailLen);
            // The L2 entries still show the old mapping, so these read what the guest saw before the write.
            if (headLen > 0)
                await ReadCoreAsync(head, plan.ClusterStart + headStart, lockHeld: false, ct).ConfigureAwait(false);
            if (tailLen > 0)
                await ReadCoreAsync(tail, plan.ClusterStart + b, lockHeld: false, ct).ConfigureAwait(false);
            if (!buf.AsSpan(0, headLen + tailLen).ContainsAnyExcept((byte)0))
            {
                await _file.WriteZeroesAsync(plan.Host, (long)plan.Clusters << _cb, mayUnmap: false, ct).ConfigureAwait(false);
                await _file.WriteAsync(data, plan.Host + a, ct).ConfigureAwait(false);
                return;
            }
            if (headLen > 0)
                await _file.WriteAsync(head, plan.Host + headStart, ct).ConfigureAwait(false);
            await _file.WriteAsync(data, plan.Host + a, ct).ConfigureAwait(false);
            if (tailLen > 0)
                await _file.WriteAsync(tail, plan.Host + b, ct).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buf);
        }
    }
}
