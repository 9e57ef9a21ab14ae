using Strata.Images.Format;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

public sealed partial class Qcow2Image
{
    private enum RunKind { Unallocated, Zero, Data, Compressed }

    /// <param name="Host">Host offset of the run's first byte (Data, allocated Zero), 0 otherwise.</param>
    /// <param name="Entry">The L2 entry, for compressed runs (always one cluster or less).</param>
    private readonly record struct Run(RunKind Kind, long Length, long Host, ulong Entry);

    /// <summary>
    /// How this layer maps the guest range starting at <paramref name="offset"/> (at most <paramref name="max"/> bytes):
    /// one run of the same kind (and contiguous host offsets for data), never crossing an L2 table. Caller holds the lock.
    /// </summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<Run> GetRunAsync(long offset, long max, CancellationToken ct)
    {
        long tableSpan = 1L << (_cb + _l2Bits);
        long toTableEnd = tableSpan - (offset & (tableSpan - 1));
        max = Math.Min(max, toTableEnd);
        var t = await GetL2Async(offset, ct).ConfigureAwait(false);
        if (t == null)
            return new Run(RunKind.Unallocated, max, 0, 0);

        int idx = L2Index(offset);
        long inCluster = offset & (_cs - 1);
        Run first = await ClassifyAsync(t, idx, inCluster, offset).ConfigureAwait(false);
        if (first.Kind == RunKind.Compressed || first.Length >= max)
            return first with { Length = Math.Min(first.Length, max) };

        long len = first.Length;
        long pos = offset + len;
        while (len < max)
        {
            idx = L2Index(pos);
            // A subcluster run can end inside a cluster: continue from where it ended, not from the cluster start.
            var next = await ClassifyAsync(t, idx, pos & (_cs - 1), pos).ConfigureAwait(false);
            if (next.Kind != first.Kind)
                break;
            if (first.Kind == RunKind.Data && next.Host != first.Host + len)
                break;
            if (first.Kind == RunKind.Zero && (first.Host == 0) != (next.Host == 0))
                break;
            len += next.Length;
            pos += next.Length;
        }
        return first with { Length = Math.Min(len, max) };
    }

    /// <summary>The run that starts <paramref name="inCluster"/> bytes into cluster <paramref name="idx"/> and ends at the end of that cluster (or of a subcluster run).</summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<Run> ClassifyAsync(CachedTable t, int idx, long inCluster, long guestOffset)
    {
        ulong entry = GetL2Entry(t, idx);
        long rest = _cs - inCluster;
        if (!_ext)
        {
            if ((entry & OflagCompressed) == 0 && (entry & L2StandardReservedMask) != 0)
                throw await SignalCorruptionAsync($"L2 entry 0x{entry:x} has reserved bits set (guest offset: 0x{guestOffset:x})").ConfigureAwait(false);
            if (_h.Version < 3 && (entry & (OflagCompressed | OflagZero)) == OflagZero)
                throw await SignalCorruptionAsync($"Zero cluster entry found in pre-v3 image (guest offset: 0x{guestOffset:x})").ConfigureAwait(false);
            switch (TypeOf(entry))
            {
                case ClusterType.Unallocated:
                    return new Run(RunKind.Unallocated, rest, 0, 0);
                case ClusterType.ZeroPlain:
                    return new Run(RunKind.Zero, rest, 0, 0);
                case ClusterType.ZeroAlloc:
                    await ValidateL2EntryAsync(entry, guestOffset).ConfigureAwait(false);
                    return new Run(RunKind.Zero, rest, (long)(entry & L2OffsetMask) + inCluster, 0);
                case ClusterType.Compressed:
                    return new Run(RunKind.Compressed, rest, 0, entry);
                default:
                    await ValidateL2EntryAsync(entry, guestOffset).ConfigureAwait(false);
                    return new Run(RunKind.Data, rest, (long)(entry & L2OffsetMask) + inCluster, 0);
            }
        }

        ulong bitmap = GetL2Bitmap(t, idx);
        if ((entry & OflagCompressed) != 0)
        {
            if (bitmap != 0)
                throw await SignalCorruptionAsync($"Compressed cluster has a non-zero subcluster bitmap (guest offset: 0x{guestOffset:x})").ConfigureAwait(false);
            return new Run(RunKind.Compressed, rest, 0, entry);
        }
        if ((entry & L2StandardReservedMask & ~OflagZero) != 0)
            throw await SignalCorruptionAsync($"L2 entry 0x{entry:x} has reserved bits set (guest offset: 0x{guestOffset:x})").ConfigureAwait(false);
        uint alloc = (uint)(bitmap & SubclusterAllocMask);
        uint zero = (uint)(bitmap >> 32);
        if ((alloc & zero) != 0)
            throw await SignalCorruptionAsync($"Subcluster is both allocated and zero (L2 bitmap 0x{bitmap:x}, guest offset: 0x{guestOffset:x})").ConfigureAwait(false);
        long host = (long)(entry & L2OffsetMask);
        if (host == 0 && alloc != 0)
            throw await SignalCorruptionAsync($"Unallocated cluster has allocated subclusters (L2 bitmap 0x{bitmap:x}, guest offset: 0x{guestOffset:x})").ConfigureAwait(false);
        if (host != 0)
            await ValidateL2EntryAsync(entry, guestOffset).ConfigureAwait(false);

        int sc = (int)(inCluster >> _scBits);
        RunKind KindOf(int s) => (alloc >> s & 1) != 0 ? RunKind.Data : (zero >> s & 1) != 0 ? RunKind.Zero : RunKind.Unallocated;
        var kind = KindOf(sc);
        int end = sc + 1;
        while (end < SubclustersPerCluster && KindOf(end) == kind)
            end++;
        long len = ((long)end << _scBits) - inCluster;
        long runHost = kind == RunKind.Unallocated || host == 0 ? 0 : host + inCluster;
        return new Run(kind, len, runHost, 0);
    }

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken ct = default)
    {
        CheckRange(offset, length);
        if (length == 0)
            return new BlockStatus(BlockState.Unallocated, 0);
        Run run;
        await _lock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            run = await GetRunAsync(offset, length, ct).ConfigureAwait(false);
        }
        finally
        {
            Unlock();
        }
        return run.Kind switch
        {
            RunKind.Data => new BlockStatus(BlockState.Data, run.Length, run.Host, Allocated: true),
            RunKind.Compressed => new BlockStatus(BlockState.Data, run.Length, null, Compressed: true, Allocated: true),
            RunKind.Zero => new BlockStatus(BlockState.Zero, run.Length, run.Host == 0 ? null : run.Host, Allocated: run.Host != 0),
            _ => new BlockStatus(BlockState.Unallocated, run.Length),
        };
    }
}
