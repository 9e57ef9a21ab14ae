using Strata.Images.Format;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

public sealed partial class Qcow2Image
{
    /// <summary>
    /// Zeroes a range the way QEMU 7.2 does: v3 images record zeroes in the L2 entries (whole clusters, or
    /// subclusters with extended L2); unaligned edges become metadata zeroes only if the rest of their granule
    /// already reads as zero, else zero bytes are written. v2 images have no zero flag and get zero bytes.
    /// </summary>
    public async ValueTask WriteZeroesAsync(long offset, long length, ZeroFlags flags = ZeroFlags.None, CancellationToken ct = default)
    {
        CheckRange(offset, length);
        CheckWritable();
        RecordDirty(offset, length);
        await ZeroRangeAsync(offset, length, flags, ct).ConfigureAwait(false);
    }

    /// <summary>The zeroing itself, without marking dirty bitmaps (a resize zeroes the new area below them).</summary>
    private async ValueTask ZeroRangeAsync(long offset, long length, ZeroFlags flags, CancellationToken ct)
    {
        if (length == 0)
            return;
        if (_h.Version < 3)
        {
            if ((flags & ZeroFlags.NoFallback) != 0)
                throw new NotSupportedException($"'{_file.Name}' (qcow2 v2) cannot record zeroes without writing them");
            await WriteZeroBytesAsync(offset, length, ct).ConfigureAwait(false);
        }
        else
        {
            int g = AllocationGranularity;
            long end = offset + length;
            long alignedStart = Math.Min(end, RoundUp(offset, g));
            long alignedEnd = Math.Max(alignedStart, end == Size ? end : end & ~((long)g - 1));
            if (offset < alignedStart)
                await ZeroPartialGranuleAsync(offset, alignedStart - offset, flags, ct).ConfigureAwait(false);
            if (alignedStart < alignedEnd)
            {
                await LockRangeAsync(alignedStart, alignedEnd - alignedStart, ct).ConfigureAwait(false);
                try
                {
                    await MarkDirtyIfLazyAsync(ct).ConfigureAwait(false);
                    await ZeroAlignedLockedAsync(alignedStart, alignedEnd, (flags & ZeroFlags.MayUnmap) != 0, ct).ConfigureAwait(false);
                }
                finally
                {
                    Unlock();
                }
            }
            if (alignedEnd < end)
                await ZeroPartialGranuleAsync(alignedEnd, end - alignedEnd, flags, ct).ConfigureAwait(false);
        }
        if ((flags & ZeroFlags.Fua) != 0)
            await FlushAsync(ct).ConfigureAwait(false);
    }

    private static long RoundUp(long v, long a) => (v + a - 1) / a * a;

    /// <summary>A piece smaller than a granule: metadata zeroes if the rest of the granule reads as zero already and holds no data here.</summary>
    private async ValueTask ZeroPartialGranuleAsync(long offset, long length, ZeroFlags flags, CancellationToken ct)
    {
        int g = AllocationGranularity;
        long gStart = offset & ~((long)g - 1);
        long gEnd = Math.Min(gStart + g, Size);
        bool done = false;
        await LockRangeAsync(gStart, gEnd - gStart, ct).ConfigureAwait(false);
        try
        {
            var run = await GetRunAsync(gStart, gEnd - gStart, ct).ConfigureAwait(false);
            bool noData = run.Length == gEnd - gStart && run.Kind is RunKind.Zero or RunKind.Unallocated;
            if (noData && await RestReadsZeroAsync(gStart, gEnd, offset, offset + length, ct).ConfigureAwait(false))
            {
                await MarkDirtyIfLazyAsync(ct).ConfigureAwait(false);
                await ZeroAlignedLockedAsync(gStart, gEnd, (flags & ZeroFlags.MayUnmap) != 0, ct).ConfigureAwait(false);
                done = true;
            }
        }
        finally
        {
            Unlock();
        }
        if (!done)
        {
            if ((flags & ZeroFlags.NoFallback) != 0)
                throw new NotSupportedException($"Zeroing [{offset}, +{length}) of '{_file.Name}' would need zero bytes written");
            await WriteZeroBytesAsync(offset, length, ct).ConfigureAwait(false);
        }
    }

    private async ValueTask<bool> RestReadsZeroAsync(long gStart, long gEnd, long a, long b, CancellationToken ct)
    {
        int len = (int)(gEnd - gStart);
        var buf = System.Buffers.ArrayPool<byte>.Shared.Rent(len);
        try
        {
            await ReadCoreAsync(buf.AsMemory(0, len), gStart, lockHeld: true, ct).ConfigureAwait(false);
            return !buf.AsSpan(0, (int)(a - gStart)).ContainsAnyExcept((byte)0)
                && !buf.AsSpan((int)(b - gStart), (int)(gEnd - b)).ContainsAnyExcept((byte)0);
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buf);
        }
    }

    private async ValueTask WriteZeroBytesAsync(long offset, long length, CancellationToken ct)
    {
        var zeros = new byte[(int)Math.Min(length, 1 << 20)];
        while (length > 0)
        {
            int n = (int)Math.Min(length, zeros.Length);
            await WriteUnrecordedAsync(zeros.AsMemory(0, n), offset, WriteFlags.None, ct).ConfigureAwait(false);
            offset += n;
            length -= n;
        }
    }

    /// <summary>Zero flags for [start, end), granule aligned (or ending at the disk end). Caller holds the lock.</summary>
    private async ValueTask ZeroAlignedLockedAsync(long start, long end, bool mayUnmap, CancellationToken ct)
    {
        long pos = start;
        while (pos < end)
        {
            long clusterStart = pos & ~((long)_cs - 1);
            long clusterEnd = Math.Min(clusterStart + _cs, end);
            var t = await GetL2ForWriteAsync(clusterStart, ct).ConfigureAwait(false);
            int idx = L2Index(clusterStart);
            ulong entry = GetL2Entry(t, idx);
            ulong bitmap = GetL2Bitmap(t, idx);
            bool whole = pos == clusterStart && (clusterEnd == clusterStart + _cs || clusterEnd == Size);
            if (!_ext)
            {
                var type = TypeOf(entry);
                bool unmap = type == ClusterType.Compressed || (mayUnmap && type is ClusterType.Normal or ClusterType.ZeroAlloc);
                ulong ne = (unmap ? 0 : entry) | OflagZero;
                if (ne != entry)
                {
                    SetL2(t, idx, ne);
                    if (unmap)
                        await FreeClusterEntryAsync(entry, ct).ConfigureAwait(false);
                }
            }
            else if (whole)
            {
                var compressed = (entry & OflagCompressed) != 0;
                bool unmap = compressed || (mayUnmap && (entry & L2OffsetMask) != 0);
                ulong ne = unmap ? 0 : entry;
                ulong nb = SubclusterZeroMask;
                if (ne != entry || nb != bitmap)
                {
                    SetL2(t, idx, ne, nb);
                    if (unmap)
                        await FreeClusterEntryAsync(entry, ct).ConfigureAwait(false);
                }
            }
            else if ((entry & OflagCompressed) != 0)
            {
                // Part of a compressed cluster cannot be zeroed in the metadata: write the zeroes (COW).
                var zeros = new byte[clusterEnd - pos];
                await AllocatingWriteAsync(zeros, pos, ct).ConfigureAwait(false);
            }
            else
            {
                uint m = SubclusterMask((int)(pos - clusterStart), (int)(clusterEnd - clusterStart));
                ulong nb = (bitmap & ~(ulong)m) | ((ulong)m << 32);
                if (nb != bitmap)
                    SetL2(t, idx, entry, nb);
            }
            pos = clusterEnd;
            await FlushIfCachesFullAsync(ct).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Discards whole clusters (partial ones are ignored, as QEMU does, except a last partial cluster at the
    /// disk end). The clusters then read as zeroes. A v2 image with a backing file cannot record that, so, as in
    /// QEMU, such a discard does nothing (it could expose stale data from the backing file).
    /// </summary>
    public async ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default)
    {
        CheckRange(offset, length);
        CheckWritable();
        RecordDirty(offset, length);
        if (_h.Version < 3 && BackingFileName != null)
            return;
        long start = RoundUp(offset, _cs);
        long end = offset + length == Size ? Size : (offset + length) & ~((long)_cs - 1);
        if (start >= end)
            return;
        await LockRangeAsync(start, end - start, ct).ConfigureAwait(false);
        try
        {
            await MarkDirtyIfLazyAsync(ct).ConfigureAwait(false);
            for (long pos = start; pos < end; pos += _cs)
            {
                var t = await GetL2Async(pos, ct).ConfigureAwait(false);
                if (t == null)
                {
                    // Nothing mapped in this whole L2 range: without a backing file there is nothing to hide.
                    if (BackingFileName == null)
                    {
                        long tableSpan = 1L << (_cb + _l2Bits);
                        pos = Math.Min(end, (pos & ~(tableSpan - 1)) + tableSpan) - _cs;
                        continue;
                    }
                }
                int idx = L2Index(pos);
                ulong entry = t == null ? 0 : GetL2Entry(t, idx);
                ulong bitmap = t == null ? 0 : GetL2Bitmap(t, idx);
                var type = TypeOf(entry);
                bool allocated = type is ClusterType.Normal or ClusterType.ZeroAlloc or ClusterType.Compressed || (_ext && (entry & L2OffsetMask) != 0);
                ulong ne = entry, nb = bitmap;
                if (BackingFileName != null || allocated)
                {
                    if (_ext)
                    {
                        ne = 0;
                        nb = SubclusterZeroMask;
                    }
                    else
                        ne = _h.Version >= 3 ? OflagZero : 0;
                }
                if (ne == entry && nb == bitmap)
                    continue;
                t ??= await GetL2ForWriteAsync(pos, ct).ConfigureAwait(false);
                if ((_l1[L1Index(pos)] & OflagCopied) == 0)
                    t = await GetL2ForWriteAsync(pos, ct).ConfigureAwait(false);
                SetL2(t, idx, ne, nb);
                await FreeClusterEntryAsync(entry, ct).ConfigureAwait(false);
                await FlushIfCachesFullAsync(ct).ConfigureAwait(false);
            }
        }
        finally
        {
            Unlock();
        }
    }
}
