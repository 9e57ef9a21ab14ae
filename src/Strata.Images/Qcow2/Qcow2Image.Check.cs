using System.Buffers.Binary;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

/// <summary>What <see cref="Qcow2Check"/> needs from the image: exclusive access, and reloading what a repair rewrote.</summary>
public sealed partial class Qcow2Image
{
    /// <summary>
    /// Runs <paramref name="body"/> under the metadata lock after writing back everything cached (refcounts
    /// included, even with lazy refcounts), so that the file alone describes the image while it is checked.
    /// </summary>
    internal async ValueTask<T> RunExclusiveForCheckAsync<T>(bool repair, Func<CancellationToken, ValueTask<T>> body, CancellationToken ct)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        await _lock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            if (!_readOnly && (_rc.IsDirty || _l2Cache.HasDirty || _dirtyL1.Count > 0 || _rc.HasPendingFrees))
            {
                await FlushMetadataLockedAsync(ct).ConfigureAwait(false);
                await _rc.WriteDirtyAsync(ct).ConfigureAwait(false);
                await _file.FlushAsync(ct).ConfigureAwait(false);
            }
            if (repair)
            {
                // Repairs may discard clusters nothing references: let lock-free I/O mapped earlier finish first.
                await WaitHostIoDrainedAsync().ConfigureAwait(false);
                _checkFootprint = await CaptureCheckFootprintAsync(ct).ConfigureAwait(false);
            }
            return await body(ct).ConfigureAwait(false);
        }
        finally
        {
            _checkFootprint = null;
            Unlock();
        }
    }

    /// <summary>Where the metadata a repair may move (refcount structures, snapshot table) was registered in <see cref="_metadata"/>.</summary>
    private sealed record CheckFootprint(long RefTableOffset, long RefTableBytes, ulong[] RefBlocks, long SnapshotsOffset, long SnapshotsSize, (ulong Offset, long Bytes)[] InactiveL1);

    private CheckFootprint? _checkFootprint;

    private async ValueTask<CheckFootprint> CaptureCheckFootprintAsync(CancellationToken ct)
    {
        long snapSize = 0;
        var l1s = new List<(ulong, long)>();
        if (_h.SnapshotCount > 0)
        {
            try
            {
                var snaps = await SnapshotTable.ReadAsync(_file, _h.SnapshotsOffset, _h.SnapshotCount, Size, repair: true, ct: ct).ConfigureAwait(false);
                snapSize = snaps.Size;
                foreach (var sn in snaps.Snapshots)
                    l1s.Add((sn.L1TableOffset, sn.L1Size * 8L));
            }
            catch (ImageException)
            {
                // Nothing was registered for a table that cannot be read.
            }
        }
        return new CheckFootprint(_h.RefcountTableOffset, (long)_h.RefcountTableClusters * _cs, [.. _rc.Table],
            _h.SnapshotsOffset, snapSize, [.. l1s]);
    }

    /// <summary>Re-registers the metadata in <see cref="_metadata"/> after a repair moved some of it.</summary>
    private async ValueTask RefreshMetadataMapAsync(CancellationToken ct)
    {
        if (_checkFootprint is { } old)
        {
            _metadata.Remove(old.RefTableOffset, old.RefTableBytes);
            foreach (ulong e in old.RefBlocks)
            {
                long off = (long)(e & RefTableOffsetMask);
                if (off != 0 && off <= MaxHostOffset)
                    _metadata.Remove(off, MetadataKind.RefcountBlock);
            }
            if (old.SnapshotsSize > 0)
                _metadata.Remove(old.SnapshotsOffset, old.SnapshotsSize);
            foreach (var (offset, bytes) in old.InactiveL1)
                if (bytes > 0 && offset <= (ulong)MaxHostOffset)
                    _metadata.Remove((long)offset, bytes);
        }
        try
        {
            await BuildMetadataMapAsync(enforce: false, validate: true, ct).ConfigureAwait(false);
        }
        catch (ImageException)
        {
            // Broken snapshot table or bitmaps: what could be registered is.
        }
        _checkFootprint = await CaptureCheckFootprintAsync(ct).ConfigureAwait(false);
    }

    /// <summary>The active L1 table as loaded (QEMU's s->l1_table). Caller holds the lock.</summary>
    internal ulong[] ActiveL1ForCheck => _l1;

    /// <summary>
    /// Forgets cached metadata and reloads the refcount table and the active L1 table from the file, after the
    /// checker rewrote them behind the caches' back. Caller holds the lock; nothing may be dirty.
    /// </summary>
    internal async ValueTask ReloadAfterCheckAsync(CancellationToken ct)
    {
        _l2Cache.Clear();
        var table = await RefcountTable.LoadTableAsync(_file, _h, ct).ConfigureAwait(false);
        _rc.ReplaceTable(table);
        if (_h.L1Size > 0)
        {
            var raw = new byte[_h.L1Size * 8L];
            await _file.ReadAsync(raw, _h.L1TableOffset, ct).ConfigureAwait(false);
            var l1 = new ulong[_h.L1Size];
            for (int i = 0; i < l1.Length; i++)
                l1[i] = BinaryPrimitives.ReadUInt64BigEndian(raw.AsSpan(i * 8));
            _l1 = l1;
        }
        _dirtyL1.Clear();
        await RefreshMetadataMapAsync(ct).ConfigureAwait(false);
    }

    /// <summary>
    /// Clears the dirty and corrupt bits after a successful repair (QEMU's qcow2_mark_clean and
    /// qcow2_mark_consistent) by rewriting the header. Caller holds the lock.
    /// </summary>
    internal async ValueTask MarkCleanAfterCheckAsync(CancellationToken ct)
    {
        const ulong bits = IncompatDirty | IncompatCorrupt;
        if ((_h.IncompatibleFeatures & bits) == 0)
            return;
        await _file.FlushAsync(ct).ConfigureAwait(false);
        _h.IncompatibleFeatures &= ~bits;
        try
        {
            await WriteHeaderAsync(ct).ConfigureAwait(false);
        }
        catch (ImageException)
        {
            // A header Strata cannot lay out again (extensions that no longer fit): change only the feature bits.
            var b = new byte[8];
            BinaryPrimitives.WriteUInt64BigEndian(b, _h.IncompatibleFeatures);
            await _file.WriteAsync(b, 72, ct).ConfigureAwait(false);
            await _file.FlushAsync(ct).ConfigureAwait(false);
        }
        _dirtyBitSet = false;
    }

    /// <summary>Sets the corrupt bit on disk (a fatal corruption found while repairing). Caller holds the lock.</summary>
    internal async ValueTask MarkCorruptForCheckAsync(CancellationToken ct)
    {
        if (_readOnly || _h.Version < 3 || _h.IsCorrupt)
            return;
        _h.IncompatibleFeatures |= IncompatCorrupt;
        var b = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(b, _h.IncompatibleFeatures);
        await _file.WriteAsync(b, 72, ct).ConfigureAwait(false);
        await _file.FlushAsync(ct).ConfigureAwait(false);
    }

    /// <summary>
    /// Writes a new snapshot table into freshly allocated clusters, points the header at it and frees the old
    /// one (QEMU's qcow2_write_snapshots). The refcount structures must be consistent (reloaded). Caller holds the lock.
    /// </summary>
    internal async ValueTask RewriteSnapshotTableForCheckAsync(byte[] table, int count, long oldOffset, long oldSize, CancellationToken ct)
    {
        long newOffset = 0;
        if (table.Length > 0)
        {
            long clusters = (table.Length + _cs - 1) >> _cb;
            newOffset = await _rc.AllocateClustersAsync(clusters, ct).ConfigureAwait(false);
            await _rc.WriteDirtyAsync(ct).ConfigureAwait(false);
            await _file.FlushAsync(ct).ConfigureAwait(false);
            await _file.WriteAsync(table, newOffset, ct).ConfigureAwait(false);
            await _file.FlushAsync(ct).ConfigureAwait(false);
        }
        var hdr = new byte[12];
        BinaryPrimitives.WriteUInt32BigEndian(hdr, (uint)count);
        BinaryPrimitives.WriteUInt64BigEndian(hdr.AsSpan(4), (ulong)newOffset);
        await _file.WriteAsync(hdr, 60, ct).ConfigureAwait(false);
        await _file.FlushAsync(ct).ConfigureAwait(false);
        _h.SnapshotCount = count;
        _h.SnapshotsOffset = newOffset;
        _snapshots = null; // the list read earlier is stale now
        if (oldOffset > 0 && oldSize > 0)
        {
            long first = oldOffset >> _cb, last = (oldOffset + oldSize - 1) >> _cb;
            await _rc.UpdateAsync(first, last - first + 1, -1, ct).ConfigureAwait(false);
            await _rc.WriteDirtyAsync(ct).ConfigureAwait(false);
            await _file.FlushAsync(ct).ConfigureAwait(false);
            // QEMU passes the discard of freed snapshot clusters down to the file (discard-snapshot=on).
            for (long c = first; c <= last; c++)
            {
                long off = c << _cb;
                if (off < _file.Length && await _rc.GetRefcountAsync(c, ct).ConfigureAwait(false) == 0)
                    await _file.DiscardAsync(off, Math.Min(_cs, _file.Length - off), ct).ConfigureAwait(false);
            }
        }
    }
}
