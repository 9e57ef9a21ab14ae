using System.Buffers.Binary;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

/// <summary>Changing the refcount width (QEMU's qcow2_change_refcount_order).</summary>
public sealed partial class Qcow2Image
{
    /// <summary>
    /// Rewrites the refcount structures with entries of 2^<paramref name="newOrder"/> bits. Crash-tolerant order:
    /// the new refcount blocks and table are allocated in the old structure (so until the header switches they are
    /// merely in use), filled, made durable, then one header write switches to them, and only then the old blocks
    /// and table are freed in the new structure. A crash at any point leaves at worst leaked clusters.
    /// </summary>
    private async ValueTask ChangeRefcountOrderAsync(int newOrder, Action<long, long>? status, CancellationToken ct)
    {
        await _lock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            await MarkCleanLockedAsync(ct).ConfigureAwait(false);
            await FlushMetadataLockedAsync(ct).ConfigureAwait(false);
            await _rc.WriteDirtyAsync(ct).ConfigureAwait(false);
            await _file.FlushAsync(ct).ConfigureAwait(false);
            await WaitHostIoDrainedAsync().ConfigureAwait(false);

            ulong newMax = newOrder == 6 ? ulong.MaxValue : (1UL << (1 << newOrder)) - 1;
            long newPerBlock = 1L << (_cb + 3 - newOrder);
            long oldPerBlock = _rc.RefcountsPerBlock;
            var oldTable = _rc.Table.ToArray();
            long oldTableOffset = _h.RefcountTableOffset;
            int oldTableClusters = _h.RefcountTableClusters;

            // Every refcount must fit the new width (checked before anything changes).
            long clusterCount = oldTable.Length * oldPerBlock;
            for (int i = 0; i < oldTable.Length; i++)
            {
                if ((oldTable[i] & RefTableOffsetMask) == 0)
                    continue;
                for (long c = i * oldPerBlock; c < (i + 1) * oldPerBlock; c++)
                {
                    ulong rc = await _rc.GetRefcountAsync(c, ct).ConfigureAwait(false);
                    if (rc > newMax)
                        throw new AmendException($"Cannot decrease refcount entry width to {1 << newOrder} bits: Cluster at offset 0x{c << _cb:x} has a refcount of {rc}");
                }
            }

            // Allocate new refcount blocks for every range holding a non-zero refcount, and a table for them;
            // allocating changes refcounts, so repeat until a pass allocates nothing.
            var newTable = new List<ulong>();
            long newTableOffset = 0, newTableClusters = 0;
            bool allocated;
            do
            {
                allocated = false;
                long end = await LastCountedClusterAsync(ct).ConfigureAwait(false) + 1;
                long blocks = (end + newPerBlock - 1) / newPerBlock;
                for (long k = 0; k < blocks; k++)
                {
                    while (newTable.Count <= k)
                        newTable.Add(0);
                    if (newTable[(int)k] != 0 || !await AnyInUseAsync(k * newPerBlock, newPerBlock, ct).ConfigureAwait(false))
                        continue;
                    newTable[(int)k] = (ulong)await _rc.AllocateClustersAsync(1, ct).ConfigureAwait(false);
                    allocated = true;
                }
                long neededClusters = ((long)newTable.Count * 8 + _cs - 1) >> _cb;
                if (allocated || newTableClusters < neededClusters)
                {
                    if (newTableOffset != 0)
                        await _rc.UpdateAsync(newTableOffset >> _cb, newTableClusters, -1, ct).ConfigureAwait(false);
                    newTableClusters = neededClusters;
                    newTableOffset = await _rc.AllocateClustersAsync(newTableClusters, ct).ConfigureAwait(false);
                    allocated = true;
                }
                status?.Invoke(0, 2);
            }
            while (allocated);
            await _rc.WriteDirtyAsync(ct).ConfigureAwait(false);
            await _file.FlushAsync(ct).ConfigureAwait(false);

            // Fill the new blocks from the old refcounts (which no longer change).
            var block = new byte[_cs];
            for (int k = 0; k < newTable.Count; k++)
            {
                if (newTable[k] == 0)
                    continue;
                Array.Clear(block);
                for (long j = 0; j < newPerBlock; j++)
                {
                    long c = k * newPerBlock + j;
                    ulong rc = await _rc.GetRefcountAsync(c, ct).ConfigureAwait(false);
                    if (rc != 0)
                        RefcountTable.Set(block, newOrder, j, rc);
                }
                await _file.WriteAsync(block, (long)newTable[k], ct).ConfigureAwait(false);
            }
            var tableBytes = new byte[newTableClusters * _cs];
            for (int k = 0; k < newTable.Count; k++)
                BinaryPrimitives.WriteUInt64BigEndian(tableBytes.AsSpan(k * 8), newTable[k]);
            await _file.WriteAsync(tableBytes, newTableOffset, ct).ConfigureAwait(false);
            await _file.FlushAsync(ct).ConfigureAwait(false);
            status?.Invoke(1, 2);

            // The switch: one header write.
            _h.RefcountOrder = newOrder;
            _h.RefcountTableOffset = newTableOffset;
            _h.RefcountTableClusters = (int)newTableClusters;
            await WriteHeaderAsync(ct).ConfigureAwait(false);

            _metadata.Remove(oldTableOffset, (long)oldTableClusters * _cs);
            foreach (ulong e in oldTable)
                if ((e & RefTableOffsetMask) is var off and not 0)
                    _metadata.Remove((long)off, MetadataKind.RefcountBlock);
            var loaded = new ulong[newTableClusters * _cs / 8];
            newTable.CopyTo(loaded);
            _rc = new RefcountTable(_file, _h, loaded, _rc.Blocks.Capacity, _metadata);
            _metadata.Add(newTableOffset, newTableClusters * _cs, MetadataKind.RefcountTable);
            foreach (ulong e in newTable)
                if (e != 0)
                    _metadata.Add((long)e, _cs, MetadataKind.RefcountBlock);

            // Now the old structures are just clusters in use: free them.
            foreach (ulong e in oldTable)
                if ((e & RefTableOffsetMask) is var off and not 0)
                    await _rc.UpdateAsync((long)off >> _cb, 1, -1, ct).ConfigureAwait(false);
            await _rc.UpdateAsync(oldTableOffset >> _cb, oldTableClusters, -1, ct).ConfigureAwait(false);
            await _rc.WriteDirtyAsync(ct).ConfigureAwait(false);
            await _file.FlushAsync(ct).ConfigureAwait(false);
            _ = clusterCount;
            status?.Invoke(2, 2);
        }
        finally
        {
            Unlock();
        }
    }

    private async ValueTask<long> LastCountedClusterAsync(CancellationToken ct)
    {
        var table = _rc.Table;
        long perBlock = _rc.RefcountsPerBlock;
        for (int i = table.Count - 1; i >= 0; i--)
        {
            if ((table[i] & RefTableOffsetMask) == 0)
                continue;
            for (long c = (i + 1) * perBlock - 1; c >= i * perBlock; c--)
                if (await _rc.GetRefcountAsync(c, ct).ConfigureAwait(false) != 0)
                    return c;
        }
        return 0;
    }

    private async ValueTask<bool> AnyInUseAsync(long first, long count, CancellationToken ct)
    {
        for (long c = first; c < first + count; c++)
            if (await _rc.GetRefcountAsync(c, ct).ConfigureAwait(false) != 0)
                return true;
        return false;
    }
}
