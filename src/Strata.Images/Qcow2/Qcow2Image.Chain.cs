using System.Buffers.Binary;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

/// <summary>The header did not have room for what was asked (QEMU's -ENOSPC from qcow2_update_header).</summary>
public sealed class HeaderSpaceException(string message) : ImageException(message);

/// <summary>Backing-chain operations on one qcow2 layer: changing the backing file name, emptying the image.</summary>
public sealed partial class Qcow2Image
{
    /// <summary>
    /// Rewrites the backing file name and format recorded in the header (QEMU's qcow2_change_backing_file).
    /// The name is stored exactly as given; <paramref name="name"/> null removes the backing file. What is read
    /// through the image does not change here: the caller swaps the opened backing image with <see cref="SetBacking"/>.
    /// </summary>
    public async ValueTask ChangeBackingFileAsync(string? name, string? format, CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        CheckWritable();
        if (name != null && System.Text.Encoding.UTF8.GetByteCount(name) > MaxBackingFileNameLength)
            throw new ImageException($"Backing file name '{name}' is too long");
        await _lock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            await FlushMetadataLockedAsync(ct).ConfigureAwait(false);
            string? oldName = _h.BackingFileName, oldFormat = _h.BackingFormat;
            long oldOffset = _h.BackingFileOffset;
            _h.BackingFileName = name;
            _h.BackingFormat = format;
            byte[] cluster0;
            try
            {
                cluster0 = _h.Serialize();
            }
            catch (ImageException)
            {
                _h.BackingFileName = oldName;
                _h.BackingFormat = oldFormat;
                _h.BackingFileOffset = oldOffset;
                throw new HeaderSpaceException($"No space left in the file header of '{_file.Name}'");
            }
            await _file.WriteAsync(cluster0, 0, ct).ConfigureAwait(false);
            await _file.FlushAsync(ct).ConfigureAwait(false);
        }
        finally
        {
            Unlock();
        }
    }

    /// <summary>
    /// Drops every cluster of the active layer so that everything reads from the backing file again (QEMU's
    /// qcow2_make_empty, used after a commit). A v3 image without snapshots or bitmaps whose L1 table fits is reset
    /// to header, refcount table, one refcount block and the L1 table, and the file truncated after them, as QEMU's
    /// make_completely_empty does (the dirty bit covers the window where the refcounts are wrong). Other images get
    /// every cluster discarded and the freed space punched out of the file.
    /// </summary>
    public async ValueTask MakeEmptyAsync(CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        CheckWritable();
        long l1Clusters = ((long)_h.L1Size * 8 + _cs - 1) >> _cb;
        bool complete = _h.Version >= 3 && _h.SnapshotCount == 0 && _h.Bitmaps is not { Count: > 0 }
            && 3 + l1Clusters <= _rc.RefcountsPerBlock && _h.CryptMethod == 0 && _h.ExternalDataFile == null;
        if (complete)
            await MakeCompletelyEmptyAsync(l1Clusters, ct).ConfigureAwait(false);
        else
            await DiscardEverythingAsync(ct).ConfigureAwait(false);
    }

    private async ValueTask MakeCompletelyEmptyAsync(long l1Clusters, CancellationToken ct)
    {
        await LockRangeAsync(0, Size, ct).ConfigureAwait(false);
        try
        {
            await FlushMetadataLockedAsync(ct).ConfigureAwait(false);
            await _rc.WriteDirtyAsync(ct).ConfigureAwait(false);
            await WaitHostIoDrainedAsync().ConfigureAwait(false);

            // Everything registered as metadata goes: the new layout is registered afresh below.
            _metadata.Remove(_h.L1TableOffset, Math.Max(8, _l1.Length * 8L));
            _metadata.Remove(_h.RefcountTableOffset, (long)_h.RefcountTableClusters * _cs);
            foreach (ulong e in _rc.Table)
                if ((e & RefTableOffsetMask) is var off and not 0 && off <= (ulong)MaxHostOffset)
                    _metadata.Remove((long)off, _cs);
            foreach (ulong e in _l1)
                if ((e & L1OffsetMask) is var off and not 0)
                    _metadata.Remove((long)off, _cs);

            // From here on the refcounts on disk are wrong until the end: the dirty bit says so.
            _h.IncompatibleFeatures |= IncompatDirty;
            await WriteIncompatibleFeaturesAsync(ct).ConfigureAwait(false);

            int l1Bytes = _h.L1Size * 8;
            if (l1Bytes > 0)
                await _file.WriteZeroesAsync(_h.L1TableOffset, l1Clusters * _cs, false, ct).ConfigureAwait(false);
            Array.Clear(_l1);
            _dirtyL1.Clear();
            _l2Cache.Clear();
            await _file.WriteZeroesAsync(_cs, (2 + l1Clusters) * _cs, false, ct).ConfigureAwait(false);

            // Refcount table in cluster 1, its one block in cluster 2, the L1 table from cluster 3.
            var fields = new byte[20];
            BinaryPrimitives.WriteUInt64BigEndian(fields, (ulong)(3L * _cs));
            BinaryPrimitives.WriteUInt64BigEndian(fields.AsSpan(8), (ulong)_cs);
            BinaryPrimitives.WriteUInt32BigEndian(fields.AsSpan(16), 1);
            await _file.WriteAsync(fields, 40, ct).ConfigureAwait(false);
            await _file.FlushAsync(ct).ConfigureAwait(false);
            _h.L1TableOffset = 3L * _cs;
            _h.RefcountTableOffset = _cs;
            _h.RefcountTableClusters = 1;

            var entry = new byte[8];
            BinaryPrimitives.WriteUInt64BigEndian(entry, (ulong)(2L * _cs));
            await _file.WriteAsync(entry, _cs, ct).ConfigureAwait(false);
            await _file.FlushAsync(ct).ConfigureAwait(false);

            var block = new byte[_cs];
            long used = 3 + l1Clusters;
            for (long c = 0; c < used; c++)
                RefcountTable.Set(block, _h.RefcountOrder, c, 1);
            await _file.WriteAsync(block, 2L * _cs, ct).ConfigureAwait(false);
            await _file.FlushAsync(ct).ConfigureAwait(false);

            var table = new ulong[_cs / 8];
            table[0] = 2UL * (ulong)_cs;
            _rc.ReplaceTable(table);
            _metadata.Add(_h.RefcountTableOffset, _cs, MetadataKind.RefcountTable);
            _metadata.Add(2L * _cs, _cs, MetadataKind.RefcountBlock);
            _metadata.Add(_h.L1TableOffset, Math.Max(8, l1Bytes), MetadataKind.ActiveL1);

            _h.IncompatibleFeatures &= ~IncompatDirty;
            await WriteIncompatibleFeaturesAsync(ct).ConfigureAwait(false);
            _dirtyBitSet = false;
            await _file.SetLengthAsync(used * _cs, ct: ct).ConfigureAwait(false);
            await _file.FlushAsync(ct).ConfigureAwait(false);
        }
        finally
        {
            Unlock();
        }
    }

    /// <summary>Every guest cluster becomes unallocated; clusters whose refcount drops to zero are punched out of the file.</summary>
    private async ValueTask DiscardEverythingAsync(CancellationToken ct)
    {
        await LockRangeAsync(0, Size, ct).ConfigureAwait(false);
        try
        {
            await MarkDirtyIfLazyAsync(ct).ConfigureAwait(false);
            long tableSpan = 1L << (_cb + _l2Bits);
            for (long pos = 0; pos < Size;)
            {
                if (L1Index(pos) >= _l1.Length || (_l1[L1Index(pos)] & L1OffsetMask) == 0)
                {
                    pos = (pos & ~(tableSpan - 1)) + tableSpan;
                    continue;
                }
                var t = await GetL2ForWriteAsync(pos, ct).ConfigureAwait(false);
                int idx = L2Index(pos);
                ulong entry = GetL2Entry(t, idx);
                ulong bitmap = GetL2Bitmap(t, idx);
                if (entry != 0 || bitmap != 0)
                {
                    SetL2(t, idx, 0, 0);
                    await FreeClusterEntryAsync(entry, ct).ConfigureAwait(false);
                    await FlushIfCachesFullAsync(ct).ConfigureAwait(false);
                }
                pos += _cs;
            }
            await FlushMetadataLockedAsync(ct).ConfigureAwait(false);
            await PunchFreeClustersAsync(ct).ConfigureAwait(false);
        }
        finally
        {
            Unlock();
        }
    }

    /// <summary>QEMU passes discards of freed clusters to the file (discard-snapshot): the space goes back to the host.</summary>
    private async ValueTask PunchFreeClustersAsync(CancellationToken ct)
    {
        long clusters = (_file.Length + _cs - 1) >> _cb;
        long runStart = -1;
        for (long c = 1; c <= clusters; c++)
        {
            bool free = c < clusters && await _rc.GetRefcountAsync(c, ct).ConfigureAwait(false) == 0;
            if (free && runStart < 0)
                runStart = c;
            else if (!free && runStart >= 0)
            {
                long off = runStart << _cb;
                await _file.DiscardAsync(off, Math.Min((c - runStart) << _cb, _file.Length - off), ct).ConfigureAwait(false);
                runStart = -1;
            }
        }
    }
}
