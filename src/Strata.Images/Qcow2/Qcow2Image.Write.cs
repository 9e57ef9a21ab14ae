using System.Buffers;
using Strata.Images.Format;
using Strata.Images.Storage;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

public sealed partial class Qcow2Image
{
    public ValueTask WriteAsync(ReadOnlyMemory<byte> data, long offset, WriteFlags flags = WriteFlags.None, CancellationToken ct = default)
    {
        CheckRange(offset, data.Length);
        CheckWritable();
        RecordDirty(offset, data.Length);
        return WriteUnrecordedAsync(data, offset, flags, ct);
    }

    /// <summary>The write itself, without marking dirty bitmaps (for writes of the driver's own, as a resize's zeroes).</summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteUnrecordedAsync(ReadOnlyMemory<byte> data, long offset, WriteFlags flags, CancellationToken ct)
    {
        while (data.Length > 0)
        {
            long host = 0;
            int n = 0;
            AllocationPlan? plan = null;
            Task? busy;
            await _lock.WaitAsync(ct).ConfigureAwait(false);
            try
            {
                busy = InflightOverlapping(offset, data.Length);
                if (busy == null)
                {
                    (host, n) = await FindInPlaceAsync(offset, data.Length, ct).ConfigureAwait(false);
                    if (n > 0)
                    {
                        // Counted before the lock is dropped, so a flush cannot free these clusters under us.
                        BeginHostIo();
                    }
                    else
                    {
                        plan = await PlanAllocationAsync(offset, data.Length, ct).ConfigureAwait(false);
                        if (plan != null)
                            n = plan.Length;
                        else
                        {
                            // Copy-on-write from a shared, compressed or preallocated cluster: rare, done under the lock.
                            n = (int)Math.Min(data.Length, _cs - (offset & (_cs - 1)));
                            await AllocatingWriteAsync(data[..n], offset, ct).ConfigureAwait(false);
                            await FlushIfCachesFullAsync(ct).ConfigureAwait(false);
                        }
                    }
                }
            }
            finally
            {
                Unlock();
            }
            if (busy != null)
            {
                // Another request is allocating one of these clusters: wait for it, then look again.
                await busy.WaitAsync(ct).ConfigureAwait(false);
                continue;
            }
            if (plan != null)
                await ExecuteAllocationAsync(plan, data[..n], offset, ct).ConfigureAwait(false);
            else if (host != 0)
            {
                try
                {
                    _file.Event(DebugEvent.WriteAio);
                    await _file.WriteAsync(data[..n], host, ct).ConfigureAwait(false);
                }
                finally
                {
                    EndHostIo();
                }
            }
            data = data[n..];
            offset += n;
        }
        if ((flags & WriteFlags.Fua) != 0)
            await FlushAsync(ct).ConfigureAwait(false);
    }

    /// <summary>
    /// The longest prefix of the range that can be written in place: clusters allocated, not shared (COPIED),
    /// and (extended L2) with every touched subcluster allocated, at contiguous host offsets. Caller holds the lock.
    /// </summary>
    private async ValueTask<(long Host, int Length)> FindInPlaceAsync(long offset, int length, CancellationToken ct)
    {
        var t = await GetL2Async(offset, ct).ConfigureAwait(false);
        if (t == null)
            return (0, 0);
        long tableSpan = 1L << (_cb + _l2Bits);
        long max = Math.Min(length, tableSpan - (offset & (tableSpan - 1)));
        long firstHost = 0, len = 0, pos = offset;
        while (len < max)
        {
            int idx = L2Index(pos);
            ulong e = GetL2Entry(t, idx);
            long inCluster = pos & (_cs - 1);
            long chunk = Math.Min(_cs - inCluster, max - len);
            if ((e & (OflagCopied | OflagCompressed)) != OflagCopied || (e & L2OffsetMask) == 0)
                break;
            if (!_ext)
            {
                if ((e & OflagZero) != 0 || (e & L2StandardReservedMask) != 0)
                    break;
            }
            else
            {
                ulong bm = GetL2Bitmap(t, idx);
                uint need = SubclusterMask((int)inCluster, (int)(inCluster + chunk));
                if (((uint)bm & need) != need || ((uint)(bm >> 32) & need) != 0)
                    break;
            }
            long host = (long)(e & L2OffsetMask);
            if ((host & (_cs - 1)) != 0)
                throw await SignalCorruptionAsync($"Cluster allocation offset 0x{host:x} unaligned (guest offset: 0x{pos:x})").ConfigureAwait(false);
            host += inCluster;
            if (len == 0)
                firstHost = host;
            else if (host != firstHost + len)
                break;
            len += chunk;
            pos += chunk;
        }
        if (len > 0)
            await CheckDataTargetAsync(firstHost, len, offset).ConfigureAwait(false);
        return (firstHost, (int)len);
    }

    /// <summary>Bits of the subclusters that [start, end) (bytes within a cluster) touches.</summary>
    private uint SubclusterMask(int start, int end)
    {
        int s0 = start >> _scBits, s1 = (end - 1) >> _scBits;
        ulong m = ((1UL << (s1 + 1)) - 1) & ~((1UL << s0) - 1);
        return (uint)m;
    }

    /// <summary>
    /// Writes <paramref name="data"/> (within one cluster) where the cluster needs allocating, copy-on-write from a
    /// shared or compressed cluster, or (extended L2) subcluster allocation. Caller holds the lock.
    /// Order: new cluster's refcount (cached) → data → L2 entry (cached); flush writes them out in that order.
    /// </summary>
    private async ValueTask AllocatingWriteAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken ct)
    {
        await MarkDirtyIfLazyAsync(ct).ConfigureAwait(false);
        long clusterStart = offset & ~((long)_cs - 1);
        int a = (int)(offset - clusterStart), b = a + data.Length;
        var t = await GetL2ForWriteAsync(clusterStart, ct).ConfigureAwait(false);
        int idx = L2Index(clusterStart);
        ulong entry = GetL2Entry(t, idx);
        ulong bitmap = GetL2Bitmap(t, idx);
        long oldHost = (long)(entry & L2OffsetMask);
        bool compressed = (entry & OflagCompressed) != 0;
        if (!compressed && oldHost != 0)
            await ValidateL2EntryAsync(entry, clusterStart).ConfigureAwait(false);
        bool copied = (entry & OflagCopied) != 0 && !compressed;

        if (!_ext)
        {
            var type = TypeOf(entry);
            if (type is ClusterType.Normal or ClusterType.ZeroAlloc && copied)
                await CheckDataTargetAsync(oldHost, _cs, clusterStart).ConfigureAwait(false);
            if (type == ClusterType.Normal && copied)
            {
                await _file.WriteAsync(data, oldHost + a, ct).ConfigureAwait(false);
                return;
            }
            if (type == ClusterType.ZeroAlloc && copied)
            {
                // Preallocated zero cluster: reuse it; the rest of it must read as zero.
                await WriteClusterImageAsync(oldHost, 0, _cs, a, data, zeroFill: true, clusterStart, newCluster: false, ct).ConfigureAwait(false);
                SetL2(t, idx, (ulong)oldHost | OflagCopied);
                return;
            }
            long newHost = await _rc.AllocateClustersAsync(1, ct).ConfigureAwait(false);
            await WriteClusterImageAsync(newHost, 0, _cs, a, data, zeroFill: false, clusterStart, newCluster: true, ct).ConfigureAwait(false);
            SetL2(t, idx, (ulong)newHost | OflagCopied);
            await FreeClusterEntryAsync(entry, ct).ConfigureAwait(false);
            return;
        }

        // Extended L2: subclusters.
        uint alloc = (uint)bitmap, zero = (uint)(bitmap >> 32);
        uint mask = SubclusterMask(a, b);
        int scs = 1 << _scBits;
        int regionStart = (a >> _scBits) << _scBits;
        int regionEnd = Math.Min(_cs, (((b - 1) >> _scBits) + 1) << _scBits);
        if (compressed)
        {
            long newHost = await _rc.AllocateClustersAsync(1, ct).ConfigureAwait(false);
            await WriteClusterImageAsync(newHost, 0, _cs, a, data, zeroFill: false, clusterStart, newCluster: true, ct).ConfigureAwait(false);
            SetL2(t, idx, (ulong)newHost | OflagCopied, SubclusterAllocMask);
            await FreeClusterEntryAsync(entry, ct).ConfigureAwait(false);
            return;
        }
        if (oldHost != 0 && copied)
        {
            await CheckDataTargetAsync(oldHost, _cs, clusterStart).ConfigureAwait(false);
            // Edges that fall in subclusters already allocated need no COW: the old bytes are in place.
            bool headOk = (a & (scs - 1)) == 0 || ((alloc >> (a >> _scBits)) & 1) != 0;
            bool tailOk = (b & (scs - 1)) == 0 || b == _cs || ((alloc >> ((b - 1) >> _scBits)) & 1) != 0;
            if (headOk && tailOk)
                await _file.WriteAsync(data, oldHost + a, ct).ConfigureAwait(false);
            else
                await WriteClusterImageAsync(oldHost, regionStart, regionEnd, a, data, zeroFill: false, clusterStart, newCluster: false, ct).ConfigureAwait(false);
            ulong nb = (ulong)(alloc | mask) | ((ulong)(zero & ~mask) << 32);
            if (nb != bitmap)
                SetL2(t, idx, entry, nb);
            return;
        }
        if (oldHost == 0)
        {
            long newHost = await _rc.AllocateClustersAsync(1, ct).ConfigureAwait(false);
            await WriteClusterImageAsync(newHost, regionStart, regionEnd, a, data, zeroFill: false, clusterStart, newCluster: true, ct).ConfigureAwait(false);
            SetL2(t, idx, (ulong)newHost | OflagCopied, mask | ((ulong)(zero & ~mask) << 32));
            return;
        }
        {
            // Shared cluster: copy the whole cluster as this layer sees it.
            long newHost = await _rc.AllocateClustersAsync(1, ct).ConfigureAwait(false);
            await WriteClusterImageAsync(newHost, 0, _cs, a, data, zeroFill: false, clusterStart, newCluster: true, ct).ConfigureAwait(false);
            SetL2(t, idx, (ulong)newHost | OflagCopied, (alloc | mask) | ((ulong)(zero & ~mask) << 32));
            await FreeClusterEntryAsync(entry, ct).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Writes bytes [regionStart, regionEnd) of a cluster at <paramref name="host"/>: <paramref name="data"/> at
    /// <paramref name="a"/>, the rest from this layer's current view (or zeroes with <paramref name="zeroFill"/>).
    /// For a <paramref name="newCluster"/> whose copied-in bytes are zero, the cluster is zeroed and only the data
    /// written (QEMU's handle_alloc_space).
    /// </summary>
    private async ValueTask WriteClusterImageAsync(long host, int regionStart, int regionEnd, int a, ReadOnlyMemory<byte> data,
        bool zeroFill, long clusterStart, bool newCluster, CancellationToken ct)
    {
        int b = a + data.Length;
        if (a == regionStart && b == regionEnd)
        {
            await _file.WriteAsync(data, host + a, ct).ConfigureAwait(false);
            return;
        }
        int len = regionEnd - regionStart;
        byte[] buf = ArrayPool<byte>.Shared.Rent(len);
        try
        {
            var region = buf.AsMemory(0, len);
            if (zeroFill)
                region.Span.Clear();
            else
            {
                if (a > regionStart)
                    await ReadCoreAsync(region[..(a - regionStart)], clusterStart + regionStart, lockHeld: true, ct).ConfigureAwait(false);
                if (b < regionEnd)
                    await ReadCoreAsync(region[(b - regionStart)..], clusterStart + b, lockHeld: true, ct).ConfigureAwait(false);
            }
            if (newCluster && !region.Span[..(a - regionStart)].ContainsAnyExcept((byte)0) && !region.Span[(b - regionStart)..].ContainsAnyExcept((byte)0))
            {
                await _file.WriteZeroesAsync(host, _cs, mayUnmap: false, ct).ConfigureAwait(false);
                await _file.WriteAsync(data, host + a, ct).ConfigureAwait(false);
                return;
            }
            data.Span.CopyTo(region.Span[(a - regionStart)..]);
            await _file.WriteAsync(region, host + regionStart, ct).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buf);
        }
    }

    /// <summary>Drops this layer's reference to the cluster an L2 entry pointed at (deferred until the new entry is durable).</summary>
    private async ValueTask FreeClusterEntryAsync(ulong entry, CancellationToken ct)
    {
        if ((entry & OflagCompressed) != 0)
        {
            var (off, bytes) = ParseCompressed(entry);
            if (((off + bytes - 1) >> _cb) > (off >> _cb))
            {
                // The span crosses into another host cluster. QEMU's descriptors cover just the compressed
                // stream, but a damaged one may claim sectors of a cluster it never counted: release only
                // the clusters the stream really uses.
                int used = await CompressedBytesUsedAsync(off, bytes, ct).ConfigureAwait(false);
                bytes = (int)Math.Min(bytes, used + CompressedSectorSize);
            }
            _rc.DeferFree(off, bytes);
            return;
        }
        long host = (long)(entry & L2OffsetMask);
        if (host != 0)
            _rc.DeferFree(host, _cs);
    }

    /// <summary>How many bytes of a compressed cluster's span its stream occupies (the whole span if it does not decode).</summary>
    private async ValueTask<int> CompressedBytesUsedAsync(long off, int bytes, CancellationToken ct)
    {
        byte[] src = ArrayPool<byte>.Shared.Rent(bytes);
        byte[] cluster = ArrayPool<byte>.Shared.Rent(_cs);
        try
        {
            await _file.ReadAsync(src.AsMemory(0, bytes), off, ct).ConfigureAwait(false);
            return Qcow2Compression.Decompress(_h.CompressionType, src.AsSpan(0, bytes), cluster.AsSpan(0, _cs));
        }
        catch (CorruptImageException)
        {
            return bytes;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(src);
            ArrayPool<byte>.Shared.Return(cluster);
        }
    }

    /// <summary>The L2 table for a guest offset, allocated or copied (if shared with a snapshot) so that it can be changed.</summary>
    private async ValueTask<CachedTable> GetL2ForWriteAsync(long guestOffset, CancellationToken ct)
    {
        long i = L1Index(guestOffset);
        if (i >= _l1.Length)
            throw await SignalCorruptionAsync($"L1 table too small for guest offset 0x{guestOffset:x}").ConfigureAwait(false);
        ulong e = _l1[i];
        long off = (long)(e & L1OffsetMask);
        if (off != 0 && (e & OflagCopied) != 0)
            return (await GetL2Async(guestOffset, ct).ConfigureAwait(false))!;

        // As QEMU's l2_allocate, the new table is written through, each step durable before the next one refers to it:
        // its refcount, then the table, then its L1 entry. (A blkdebug file sees the same requests and events as QEMU's.)
        _file.Event(DebugEvent.ClusterAlloc);
        long newL2 = await _rc.AllocateClustersAsync(1, ct).ConfigureAwait(false);
        CachedTable? t = null;
        bool linking = false;
        try
        {
            await _rc.WriteDirtyAsync(ct).ConfigureAwait(false);
            await _file.FlushAsync(ct).ConfigureAwait(false);
            if (off == 0)
                t = _l2Cache.GetEmpty(newL2);
            else
            {
                _file.Event(DebugEvent.L2AllocCowRead);
                var old = (await GetL2Async(guestOffset, ct).ConfigureAwait(false))!;
                t = _l2Cache.GetEmpty(newL2, old.Data);
            }
            _file.Event(DebugEvent.L2AllocWrite);
            await _l2Cache.WriteDirtyAsync(ct).ConfigureAwait(false);
            await _file.FlushAsync(ct).ConfigureAwait(false);
            _l1[i] = (ulong)newL2 | OflagCopied;
            _dirtyL1.Add((int)i);
            await WriteL1EntriesAsync(ct).ConfigureAwait(false);
            linking = true;
            await _file.FlushAsync(ct).ConfigureAwait(false);
        }
        catch (Exception ex) when (!linking && ex is IOException or ImageException)
        {
            // As QEMU's l2_allocate: the old L1 entry stays, the new table's cluster is freed (no leak). Once the L1 entry
            // is written (only its flush failed), the new table, durable by then, is kept.
            _l1[i] = e;
            _dirtyL1.Remove((int)i);
            _l2Cache.Discard(newL2);
            while (!await _rc.UpdateAsync(newL2 >> _cb, 1, -1, ct).ConfigureAwait(false)) { }
            throw;
        }
        if (off != 0)
        {
            _rc.DeferFree(off, _cs);
            _metadata.Remove(off, MetadataKind.ActiveL2); // now only the snapshot's
        }
        _metadata.Add(newL2, _cs, MetadataKind.ActiveL2);
        return t;
    }

    /// <summary>With lazy refcounts, the dirty bit goes to disk before the first metadata change (refcounts are then written only on close).</summary>
    private async ValueTask MarkDirtyIfLazyAsync(CancellationToken ct)
    {
        if (!_h.LazyRefcounts || _dirtyBitSet)
            return;
        // Make the refcounts written so far durable first, so that only later changes can be lost.
        await FlushMetadataLockedAsync(ct).ConfigureAwait(false);
        _h.IncompatibleFeatures |= IncompatDirty;
        await WriteIncompatibleFeaturesAsync(ct).ConfigureAwait(false);
        _dirtyBitSet = true;
    }

    private async ValueTask FlushIfCachesFullAsync(CancellationToken ct)
    {
        // Dirty tables cannot be evicted, and freed clusters cannot be reused until a flush: bound both.
        if (_l2Cache.DirtyCount >= _l2Cache.Capacity || _rc.Blocks.DirtyCount >= _rc.Blocks.Capacity || _rc.PendingFreeCount >= MaxPendingFrees)
            await FlushMetadataLockedAsync(ct).ConfigureAwait(false);
    }

    private const int MaxPendingFrees = 4096;
}
