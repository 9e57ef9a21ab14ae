using System.Buffers.Binary;
using Strata.Images.Format;
using Strata.Images.Storage;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

public sealed partial class Qcow2Image
{
    public async ValueTask ResizeAsync(long newSize, bool allowShrink, Preallocation prealloc = Preallocation.Off, CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        CheckWritable();
        if (newSize < 0 || (newSize & 511) != 0)
            throw new ArgumentException($"Image size must be a multiple of 512 bytes ({newSize} requested for '{_file.Name}')");
        if (newSize < _h.Size && !allowShrink)
            throw new ImageException($"Use the --shrink option to perform a shrink operation on '{_file.Name}'");
        // v3 snapshots record their disk size; v2 ones do not, so QEMU refuses any resize then.
        if (_h.SnapshotCount > 0 && _h.Version < 3)
            throw new ImageException($"Can't resize a v2 image which has snapshots ('{_file.Name}')");
        if (newSize < _h.Size && prealloc != Preallocation.Off)
            throw new ImageException("Preallocation can't be used for shrinking an image");
        if (L1EntriesFor(newSize) * 8 > MaxL1SizeBytes)
            throw new ImageException($"The new size {newSize} needs an L1 table larger than {MaxL1SizeBytes} bytes ('{_file.Name}')");

        CheckBitmapsResizable(newSize);
        long oldSize = _h.Size;
        // bdrv_co_truncate: where a longer backing file would show through, the new area must read as zeroes. v2
        // cannot record zeroes, and QEMU fails then.
        bool zeroNewArea = newSize > oldSize && _backing != null && _backing.Size > oldSize;
        if (zeroNewArea && _h.Version < 3)
            throw new ImageException("Failed to zero out new clusters: Operation not supported");
        await LockRangeAsync(0, oldSize, ct).ConfigureAwait(false);
        try
        {
            if (newSize < oldSize)
                await ShrinkLockedAsync(newSize, ct).ConfigureAwait(false);
            else
            {
                long need = L1EntriesFor(newSize);
                if (need > _l1.Length)
                    await GrowL1LockedAsync((int)need, ct).ConfigureAwait(false);
            }
            _h.Size = newSize;
            var b = new byte[8];
            BinaryPrimitives.WriteUInt64BigEndian(b, (ulong)newSize);
            await _file.WriteAsync(b, 24, ct).ConfigureAwait(false);
            await _file.FlushAsync(ct).ConfigureAwait(false);
            ResizeBitmaps(newSize);
        }
        finally
        {
            Unlock();
        }
        if (newSize > oldSize && prealloc != Preallocation.Off)
            await PreallocateAsync(oldSize, newSize, prealloc, ct).ConfigureAwait(false);
        if (zeroNewArea)
            await ZeroRangeAsync(oldSize, newSize - oldSize, ZeroFlags.None, ct).ConfigureAwait(false);
    }

    private long L1EntriesFor(long size) => _h.L1EntriesFor(size);

    /// <summary>
    /// Moves the L1 table to new, larger clusters (QEMU's qcow2_grow_l1_table with an exact size): the new table is
    /// durable before the header points at it, and the old one is freed only afterwards.
    /// </summary>
    internal async ValueTask GrowL1LockedAsync(int newEntries, CancellationToken ct)
    {
        // Every L2 table the copied entries point at must be on disk first.
        await FlushMetadataLockedAsync(ct).ConfigureAwait(false);
        long bytes = newEntries * 8L;
        long clusters = (bytes + _cs - 1) >> _cb;
        long newOffset = await _rc.AllocateClustersAsync(clusters, ct).ConfigureAwait(false);
        await _rc.WriteDirtyAsync(ct).ConfigureAwait(false);
        var newL1 = new ulong[newEntries];
        Array.Copy(_l1, newL1, _l1.Length);
        var raw = new byte[bytes];
        for (int i = 0; i < newEntries; i++)
            BinaryPrimitives.WriteUInt64BigEndian(raw.AsSpan(i * 8), newL1[i]);
        await _file.WriteAsync(raw, newOffset, ct).ConfigureAwait(false);
        await _file.FlushAsync(ct).ConfigureAwait(false);

        var hdr = new byte[12];
        BinaryPrimitives.WriteUInt32BigEndian(hdr, (uint)newEntries);
        BinaryPrimitives.WriteUInt64BigEndian(hdr.AsSpan(4), (ulong)newOffset);
        await _file.WriteAsync(hdr, 36, ct).ConfigureAwait(false);
        await _file.FlushAsync(ct).ConfigureAwait(false);

        long oldOffset = _h.L1TableOffset;
        long oldBytes = _l1.Length * 8L;
        _l1 = newL1;
        _h.L1Size = newEntries;
        _h.L1TableOffset = newOffset;
        if (oldBytes > 0)
            _metadata.Remove(oldOffset, oldBytes);
        _metadata.Add(newOffset, bytes, MetadataKind.ActiveL1);
        if (oldOffset != 0 && oldBytes > 0)
        {
            long first = oldOffset >> _cb;
            await _rc.UpdateAsync(first, ((oldOffset + oldBytes - 1) >> _cb) - first + 1, -1, ct).ConfigureAwait(false);
            await _rc.WriteDirtyAsync(ct).ConfigureAwait(false);
            await _file.FlushAsync(ct).ConfigureAwait(false);
        }
    }

    private async ValueTask ShrinkLockedAsync(long newSize, CancellationToken ct)
    {
        // Drop every cluster past the new end (a full discard: nothing may read through afterwards).
        long start = RoundUp(newSize, _cs);
        for (long pos = start; pos < _h.Size; pos += _cs)
        {
            var t = await GetL2Async(pos, ct).ConfigureAwait(false);
            if (t == null)
                continue;
            int idx = L2Index(pos);
            ulong entry = GetL2Entry(t, idx);
            if (entry == 0 && GetL2Bitmap(t, idx) == 0)
                continue;
            t = await GetL2ForWriteAsync(pos, ct).ConfigureAwait(false);
            SetL2(t, idx, 0, 0);
            await FreeClusterEntryAsync(entry, ct).ConfigureAwait(false);
        }
        // L2 tables wholly past the end go too; the L1 keeps its size, as in QEMU.
        long keep = L1EntriesFor(newSize);
        for (long i = keep; i < _l1.Length; i++)
        {
            long off = (long)(_l1[i] & L1OffsetMask);
            if (off == 0)
                continue;
            _l1[i] = 0;
            _dirtyL1.Add((int)i);
            _rc.DeferFree(off, _cs);
        }
        await FlushMetadataLockedAsync(ct).ConfigureAwait(false);
        // Give back trailing free space.
        long last = await LastUsedClusterAsync(ct).ConfigureAwait(false);
        long newLength = (last + 1) << _cb;
        if (newLength < _file.Length)
            await _file.SetLengthAsync(newLength, Preallocation.Off, ct).ConfigureAwait(false);
    }

    private async ValueTask<long> LastUsedClusterAsync(CancellationToken ct)
    {
        long clusters = (_file.Length + _cs - 1) >> _cb;
        for (long c = clusters - 1; c > 0; c--)
            if (await _rc.GetRefcountAsync(c, ct).ConfigureAwait(false) != 0)
                return c;
        return 0;
    }

    /// <summary>
    /// Preallocates guest range [from, to): metadata (L2 tables and data clusters, all mapped), and for falloc/full
    /// also the file space (full writes zeroes).
    /// </summary>
    internal async ValueTask PreallocateAsync(long from, long to, Preallocation mode, CancellationToken ct)
    {
        if (mode is Preallocation.Falloc or Preallocation.Full)
        {
            await PreallocateFileAsync(from, to, mode, ct).ConfigureAwait(false);
            return;
        }
        long hostEnd = 0;
        await LockRangeAsync(from, to - from, ct).ConfigureAwait(false);
        try
        {
            long pos = from & ~((long)_cs - 1);
            while (pos < to)
            {
                var t = await GetL2ForWriteAsync(pos, ct).ConfigureAwait(false);
                // As many clusters as fit in this L2 table, allocated contiguously like QEMU's handle_alloc.
                long tableSpan = 1L << (_cb + _l2Bits);
                long tableEnd = Math.Min(to, (pos & ~(tableSpan - 1)) + tableSpan);
                long first = pos;
                var todo = new List<int>();
                for (long p = first; p < tableEnd; p += _cs)
                {
                    int i = L2Index(p);
                    if ((GetL2Entry(t, i) & L2OffsetMask) == 0 && (GetL2Entry(t, i) & OflagCompressed) == 0)
                        todo.Add(i);
                }
                int k = 0;
                while (k < todo.Count)
                {
                    int n = 1;
                    while (k + n < todo.Count && todo[k + n] == todo[k] + n)
                        n++;
                    long host = await _rc.AllocateClustersAsync(n, ct).ConfigureAwait(false);
                    // With extended L2 the space is reserved but no subcluster is allocated (as QEMU): reads
                    // still go to the backing file until written.
                    for (int j = 0; j < n; j++)
                        SetL2(t, todo[k + j], (ulong)(host + ((long)j << _cb)) | OflagCopied, 0);
                    hostEnd = Math.Max(hostEnd, host + ((long)n << _cb));
                    k += n;
                }
                pos = tableEnd;
                await FlushIfCachesFullAsync(ct).ConfigureAwait(false);
            }
            // Data clusters must read as zero: extend the file over them before they are referenced.
            if (hostEnd > _file.Length)
            {
                var fileMode = mode == Preallocation.Metadata ? Preallocation.Off : mode;
                await _file.SetLengthAsync(hostEnd, fileMode, ct).ConfigureAwait(false);
            }
            await FlushMetadataLockedAsync(ct).ConfigureAwait(false);
        }
        finally
        {
            Unlock();
        }
    }

    /// <summary>
    /// falloc/full preallocation as QEMU's qcow2_co_truncate lays it out: refcount structures for the whole new
    /// area first (a new refcount table at the end of the file), then the data clusters right after it, the file
    /// grown over them with the preallocation mode, and finally the L2 entries (new L2 tables from the allocator).
    /// </summary>
    private async ValueTask PreallocateFileAsync(long from, long to, Preallocation mode, CancellationToken ct)
    {
        await LockRangeAsync(from, to - from, ct).ConfigureAwait(false);
        try
        {
            await FlushMetadataLockedAsync(ct).ConfigureAwait(false);
            long oldFileSize = RoundUp(_file.Length, _cs);
            long firstCluster = from & ~((long)_cs - 1);
            long dataClusters = (RoundUp(to, _cs) - firstCluster) >> _cb;
            if (dataClusters <= 0)
                return;
            // Room for the L2 tables too (an overestimate, plus one for an unaligned head or tail), so that
            // linking the data never needs another refcount block.
            long l2Tables = (dataClusters + (1L << _l2Bits) - 1) / (1L << _l2Bits) + 1;
            long allocationStart = await _rc.GrowTableAsync(oldFileSize, dataClusters + l2Tables, exactSize: true, 0, 0, ct).ConfigureAwait(false);
            long taken = await _rc.AllocateAtAsync(allocationStart, dataClusters, ct).ConfigureAwait(false);
            if (taken != dataClusters)
                throw new ImageException($"Failed to allocate data clusters in '{_file.Name}'");
            await _rc.WriteDirtyAsync(ct).ConfigureAwait(false);
            await _file.SetLengthAsync(allocationStart + (dataClusters << _cb), mode, ct).ConfigureAwait(false);

            // A partial cluster at the old end keeps its data (copy-on-write into its new place).
            if ((from & (_cs - 1)) != 0)
            {
                var head = new byte[from - firstCluster];
                await ReadCoreAsync(head, firstCluster, lockHeld: true, ct).ConfigureAwait(false);
                await _file.WriteAsync(head, allocationStart, ct).ConfigureAwait(false);
            }
            long host = allocationStart;
            for (long guest = firstCluster; guest < to; guest += _cs, host += _cs)
            {
                var t = await GetL2ForWriteAsync(guest, ct).ConfigureAwait(false);
                int idx = L2Index(guest);
                ulong old = GetL2Entry(t, idx);
                SetL2(t, idx, (ulong)host | OflagCopied, _ext ? SubclusterAllocMask : 0);
                await FreeClusterEntryAsync(old, ct).ConfigureAwait(false);
            }
            await FlushMetadataLockedAsync(ct).ConfigureAwait(false);
        }
        finally
        {
            Unlock();
        }
    }
}
