using System.Buffers;
using Strata.Images.Bitmaps;
using Strata.Images.Format;

namespace Strata.Block.Jobs;

/// <summary>
/// QEMU's block-copy (block/block-copy.c): copies clusters from a source node to a target node, each cluster at most
/// once, tracked by a copy bitmap. The backup job's background pass and the copy-before-write filter's guest-write
/// path share it: whoever claims a dirty area clears its bits and copies it; a guest write that meets a claimed area
/// waits for its copy to land before it goes on. Ranges the source reports as zero are written as zeroes (holes in
/// the target); with <see cref="SkipUnallocated"/> (sync=top) ranges the top layer does not hold are not copied.
/// </summary>
public sealed class BlockCopy
{
    /// <summary>BLOCK_COPY_MAX_BUFFER: the largest single read/write of a task.</summary>
    public const int MaxChunk = 1 << 20;

    private const int DefaultClusterSize = 64 * 1024;

    private readonly BlockNode _source;
    private readonly BlockNode _target;
    private readonly Lock _gate = new();
    private readonly List<InFlight> _inFlight = [];

    private sealed class InFlight(long offset, long end)
    {
        public readonly long Offset = offset;
        /// <summary>Where the task ends; shortened (under the gate) when its first extent is shorter than the claim.</summary>
        public long End = end;
        public readonly TaskCompletionSource Done = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    public BlockCopy(BlockNode source, BlockNode target, bool compress)
    {
        _source = source;
        _target = target;
        Compress = compress;
        ClusterSize = ClusterSizeFor(target);
        Length = source.Size;
        CopyBitmap = new DirtyBitmap(Length, (uint)ClusterSize);
        _chunk = Math.Max(MaxChunk, ClusterSize);
    }

    private readonly int _chunk;

    /// <summary>block_copy_calculate_cluster_size: the target's cluster size, at least 64 KiB.</summary>
    public static int ClusterSizeFor(BlockNode target)
    {
        int cs = target.FormatImage is Strata.Images.Qcow2.Qcow2Image q ? q.ClusterSize : 0;
        return Math.Max(DefaultClusterSize, cs);
    }

    public int ClusterSize { get; }

    public long Length { get; }

    public bool Compress { get; }

    /// <summary>Clusters still to copy (set = not yet copied).</summary>
    public DirtyBitmap CopyBitmap { get; }

    /// <summary>sync=top: areas the source's top layer does not allocate are dropped instead of copied.</summary>
    public bool SkipUnallocated { get; set; }

    /// <summary>Bytes copied (or found unallocated) are reported here: the job's progress.</summary>
    public Action<long>? Progress { get; set; }

    /// <summary>Bytes found unallocated in the top layer (sync=top) and dropped: the job's total shrinks by them.</summary>
    public Action<long>? Skipped { get; set; }

    /// <summary>The copy-before-write path: any failure breaks the guest write; the job learns of it through this.</summary>
    public Action<Exception, bool>? GuestCopyFailed { get; set; }

    /// <summary>Bytes being copied right now (block-copy's in_flight_bytes).</summary>
    public long InFlightBytes
    {
        get
        {
            lock (_gate)
            {
                long n = 0;
                foreach (var t in _inFlight)
                    n += t.End - t.Offset;
                return n;
            }
        }
    }

    /// <summary>Ends when every copy in flight now has landed (a drain waits for it).</summary>
    public Task WhenIdle()
    {
        lock (_gate)
            return _inFlight.Count == 0 ? Task.CompletedTask : Task.WhenAll(_inFlight.Select(t => t.Done.Task));
    }

    /// <summary>
    /// Claims the next dirty area at or after <paramref name="from"/> and before <paramref name="end"/>, at most
    /// <paramref name="max"/> bytes: its bits are cleared and it is registered in flight. Null when none is left.
    /// </summary>
    private InFlight? Claim(long from, long end, long max)
    {
        lock (_gate)
        {
            var area = CopyBitmap.NextDirtyArea(from, end, max);
            if (area is not { } a)
                return null;
            long s = a.Offset, e = Math.Min(a.Offset + a.Length, Length);
            CopyBitmap.ResetRange(s, e - s);
            var t = new InFlight(s, e);
            _inFlight.Add(t);
            return t;
        }
    }

    private Task? InFlightOverlapping(long offset, long end)
    {
        lock (_gate)
        {
            foreach (var t in _inFlight)
                if (t.Offset < end && offset < t.End)
                    return t.Done.Task;
            return null;
        }
    }

    /// <summary>
    /// block_copy_task_shrink: a task covers one extent of the source (data, zeroes or unallocated), so that a failure
    /// puts back only that extent; the rest of the claim is dirty again for the next task.
    /// </summary>
    private void Shrink(InFlight t, long end)
    {
        lock (_gate)
        {
            CopyBitmap.SetRange(end, t.End - end);
            t.End = end;
        }
    }

    private void Finish(InFlight t, bool ok)
    {
        lock (_gate)
        {
            if (!ok)
                CopyBitmap.SetRange(t.Offset, t.End - t.Offset); // copied again later (or by the guest write's retry)
            _inFlight.Remove(t);
        }
        t.Done.TrySetResult();
    }

    /// <summary>
    /// Copy-before-write: makes sure every cluster of [offset, offset+length) holds its old data in the target before
    /// the caller changes it in the source.
    /// </summary>
    public async ValueTask CopyBeforeWriteAsync(long offset, long length, CancellationToken ct = default)
    {
        long start = offset / ClusterSize * ClusterSize;
        long end = Math.Min(Length, (offset + length + ClusterSize - 1) / ClusterSize * ClusterSize);
        while (true)
        {
            var t = Claim(start, end, _chunk);
            if (t is not null)
            {
                (bool ok, Exception? error, bool isRead) = await RunTaskAsync(t, ct).ConfigureAwait(false);
                if (!ok)
                {
                    GuestCopyFailed?.Invoke(error!, isRead);
                    throw error!;
                }
                continue;
            }
            var wait = InFlightOverlapping(start, end);
            if (wait is null)
                return;
            await wait.ConfigureAwait(false);
        }
    }

    /// <summary>
    /// The background pass: one task (at most <see cref="MaxChunk"/> bytes) from <paramref name="from"/> on: where it
    /// ends, its size and its run; null when nothing dirty is left after <paramref name="from"/>.
    /// </summary>
    public async ValueTask<(long Next, long Bytes, Task<(bool Ok, Exception? Error, bool IsRead)> Task)?> StartNextAsync(long from, CancellationToken ct)
    {
        var t = Claim(from, Length, _chunk);
        if (t is null)
            return null;
        // block_copy_dirty_clusters asks the block status before it starts a task and cuts the task to that extent, so
        // the next task starts right after it.
        (Extent Kind, long Length) first;
        try
        {
            first = await StatusAsync(t.Offset, t.End - t.Offset, ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or Strata.Images.ImageException or BlockException or NotSupportedException or ArgumentException)
        {
            Finish(t, ok: false);
            return (t.End, t.End - t.Offset, Task.FromResult((false, (Exception?)e, true)));
        }
        if (t.Offset + first.Length < t.End)
            Shrink(t, t.Offset + first.Length);
        return (t.End, t.End - t.Offset, RunTaskAsync(t, ct, first));
    }

    private async Task<(bool, Exception?, bool)> RunTaskAsync(InFlight t, CancellationToken ct, (Extent Kind, long Length)? first = null)
    {
        bool isRead = true;
        byte[] buffer = ArrayPool<byte>.Shared.Rent(_chunk);
        try
        {
            long pos = t.Offset, skipped = 0;
            while (pos < t.End)
            {
                var (kind, len) = first ?? await StatusAsync(pos, t.End - pos, ct).ConfigureAwait(false);
                first = null;
                if (pos + len < t.End)
                    Shrink(t, pos + len);
                isRead = true;
                switch (kind)
                {
                    case Extent.Skip:
                        skipped += len;
                        break;
                    case Extent.Zero:
                        isRead = false;
                        await _target.WriteZeroesAsync(pos, len, ZeroFlags.None, ct).ConfigureAwait(false);
                        break;
                    default:
                        var mem = buffer.AsMemory(0, (int)len);
                        await _source.ReadAsync(mem, pos, ct).ConfigureAwait(false);
                        isRead = false;
                        await WriteDataAsync(mem, pos, ct).ConfigureAwait(false);
                        break;
                }
                pos += len;
            }
            Finish(t, ok: true);
            if (skipped > 0)
                Skipped?.Invoke(skipped);
            Progress?.Invoke(t.End - t.Offset - skipped);
            return (true, null, false);
        }
        catch (Exception e) when (e is IOException or Strata.Images.ImageException or BlockException or NotSupportedException or ArgumentException)
        {
            Finish(t, ok: false);
            return (false, e, isRead);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private async ValueTask WriteDataAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken ct)
    {
        if (!Compress || _target.FormatImage is not Strata.Images.Qcow2.Qcow2Image q)
        {
            await _target.WriteAsync(data, offset, WriteFlags.None, ct).ConfigureAwait(false);
            return;
        }
        // Compressed writes go cluster by cluster of the target (the copy is aligned to them).
        int cs = q.ClusterSize;
        for (int i = 0; i < data.Length; i += cs)
        {
            int n = Math.Min(cs, data.Length - i);
            await q.WriteCompressedAsync(data.Slice(i, n), offset + i, ct).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// block_copy_reset_unallocated, one extent: when the top layer does not allocate the clusters at
    /// <paramref name="offset"/> (cluster aligned), they leave the copy bitmap. Returns where the next extent starts and
    /// how many dirty bytes were dropped.
    /// </summary>
    public async ValueTask<(long Next, long Dropped)> ResetUnallocatedAsync(long offset, CancellationToken ct = default)
    {
        long want = Math.Min(Length - offset, 1L << 30);
        var s = await _source.GetBlockStatusAsync(offset, want, ct).ConfigureAwait(false);
        long len = Math.Min(want, Math.Max(1, s.Length));
        long end = offset + len == Length ? Length : (offset + len) / ClusterSize * ClusterSize;
        if (s.State != BlockState.Unallocated || end <= offset)
            return (Math.Max(end, Math.Min(Length, offset + ClusterSize)), 0);
        long dropped = 0;
        lock (_gate)
        {
            long pos = offset;
            while (CopyBitmap.NextDirtyArea(pos, end) is { } a)
            {
                long e = Math.Min(a.Offset + a.Length, end);
                dropped += e - a.Offset;
                pos = e;
            }
            CopyBitmap.ResetRange(offset, end - offset);
        }
        return (end, dropped);
    }

    private enum Extent { Data, Zero, Skip }

    /// <summary>
    /// block_copy_block_status: what the source holds at <paramref name="offset"/> (over its whole chain, or its top
    /// layer only with <see cref="SkipUnallocated"/>), kept to whole clusters unless the extent reaches the end.
    /// </summary>
    private async ValueTask<(Extent Kind, long Length)> StatusAsync(long offset, long length, CancellationToken ct)
    {
        IImage layer = _source;
        long len = length;
        Extent kind;
        bool top = true;
        while (true)
        {
            var s = await layer.GetBlockStatusAsync(offset, len, ct).ConfigureAwait(false);
            len = Math.Min(len, Math.Max(1, s.Length));
            if (s.State == BlockState.Data)
            {
                kind = Extent.Data;
                break;
            }
            if (s.State == BlockState.Zero)
            {
                kind = Extent.Zero;
                break;
            }
            if (top && SkipUnallocated)
            {
                kind = Extent.Skip;
                break;
            }
            top = false;
            if (Backing(layer) is not { } below || offset >= below.Size)
            {
                kind = Extent.Zero;
                break;
            }
            len = Math.Min(len, below.Size - offset);
            layer = below;
        }
        // Keep tasks cluster-granular: a short extent inside a cluster is copied as data with the rest.
        if (offset + len < offset + length)
        {
            long aligned = (offset + len) / ClusterSize * ClusterSize;
            if (aligned <= offset)
                return (Extent.Data, Math.Min(length, ClusterSize - offset % ClusterSize));
            len = aligned - offset;
        }
        return (kind, len);
    }

    private static IImage? Backing(IImage layer) => layer switch
    {
        BlockNode n => n.BackingChild,
        _ => layer.Backing,
    };
}
