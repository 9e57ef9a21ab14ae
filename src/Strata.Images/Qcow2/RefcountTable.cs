using System.Buffers.Binary;
using Strata.Images.Storage;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

/// <summary>
/// The two-level refcount structure (table in memory, blocks through a cache) and the cluster allocator
/// built on it, following QEMU's placement (first fit from a moving free index; new refcount blocks
/// describe themselves when they can; the table grows by half again, at the end of the image).
/// Not thread-safe: the image calls it under its metadata lock.
/// </summary>
internal sealed class RefcountTable
{
    private readonly IStorage _storage;
    private readonly Qcow2Header _header;
    private readonly int _clusterBits;
    private readonly int _clusterSize;
    private readonly int _order;
    private readonly int _blockBits;   // log2(refcounts per block)
    private readonly ulong _max;
    private ulong[] _table;
    private readonly SortedSet<int> _dirtyTableEntries = [];
    private readonly List<(long Offset, long Length)> _pendingFrees = [];
    private long _freeClusterIndex;
    private long _freeByteOffset;

    private readonly MetadataMap _metadata;
    private CachedTable? _hot;
    private long _hotTableIndex;
    private int _hotRemovals;

    public RefcountTable(IStorage storage, Qcow2Header header, ulong[] table, int cacheTables, MetadataMap metadata)
    {
        _storage = storage;
        _metadata = metadata;
        _header = header;
        _clusterBits = header.ClusterBits;
        _clusterSize = header.ClusterSize;
        _order = header.RefcountOrder;
        _blockBits = _clusterBits + 3 - _order;
        _max = _order == 6 ? ulong.MaxValue : (1UL << (1 << _order)) - 1;
        _table = table;
        Blocks = new MetadataCache(storage, _clusterSize, cacheTables)
        {
            LoadEvent = DebugEvent.RefblockLoad, UpdateEvent = DebugEvent.RefblockUpdatePart,
        };
    }

    public MetadataCache Blocks { get; }
    public long RefcountsPerBlock => 1L << _blockBits;
    public ulong MaxRefcount => _max;
    public bool HasPendingFrees => _pendingFrees.Count > 0;
    public int PendingFreeCount => _pendingFrees.Count;
    public bool IsDirty => Blocks.HasDirty || _dirtyTableEntries.Count > 0;

    /// <summary>Whether refcount table entries wait to point at new refcount blocks (those blocks must be durable first).</summary>
    public bool HasDirtyTableEntries => _dirtyTableEntries.Count > 0;
    public IReadOnlyList<ulong> Table => _table;

    public static async ValueTask<ulong[]> LoadTableAsync(IStorage storage, Qcow2Header header, CancellationToken ct)
    {
        long bytes = (long)header.RefcountTableClusters * header.ClusterSize; // bounded by the header check (8 MiB)
        var raw = new byte[bytes];
        await storage.ReadAsync(raw, header.RefcountTableOffset, ct).ConfigureAwait(false);
        var table = new ulong[bytes / 8];
        for (int i = 0; i < table.Length; i++)
            table[i] = BinaryPrimitives.ReadUInt64BigEndian(raw.AsSpan(i * 8));
        return table;
    }

    internal static ulong Get(ReadOnlySpan<byte> block, int order, long index)
    {
        switch (order)
        {
            case 6: return BinaryPrimitives.ReadUInt64BigEndian(block[(int)(index * 8)..]);
            case 5: return BinaryPrimitives.ReadUInt32BigEndian(block[(int)(index * 4)..]);
            case 4: return BinaryPrimitives.ReadUInt16BigEndian(block[(int)(index * 2)..]);
            case 3: return block[(int)index];
            default:
                int w = 1 << order;
                long bit = index * w;
                return (ulong)((block[(int)(bit >> 3)] >> (int)(bit & 7)) & ((1 << w) - 1));
        }
    }

    internal static void Set(Span<byte> block, int order, long index, ulong value)
    {
        switch (order)
        {
            case 6: BinaryPrimitives.WriteUInt64BigEndian(block[(int)(index * 8)..], value); break;
            case 5: BinaryPrimitives.WriteUInt32BigEndian(block[(int)(index * 4)..], (uint)value); break;
            case 4: BinaryPrimitives.WriteUInt16BigEndian(block[(int)(index * 2)..], (ushort)value); break;
            case 3: block[(int)index] = (byte)value; break;
            default:
                int w = 1 << order;
                long bit = index * w;
                int mask = ((1 << w) - 1) << (int)(bit & 7);
                ref byte b = ref block[(int)(bit >> 3)];
                b = (byte)((b & ~mask) | (((int)value << (int)(bit & 7)) & mask));
                break;
        }
    }

    private long BlockOffsetFor(long clusterIndex, out bool outOfTable)
    {
        long ti = clusterIndex >> _blockBits;
        outOfTable = ti >= _table.Length;
        if (outOfTable)
            return 0;
        ulong e = _table[ti];
        if ((e & RefTableReservedMask) != 0)
            throw new CorruptImageException($"Refcount table entry {ti} has reserved bits set (0x{e:x}) in '{_storage.Name}'");
        ulong raw = e & RefTableOffsetMask;
        if (raw > (ulong)MaxHostOffset)
            throw new CorruptImageException($"Refblock offset 0x{raw:x} is out of range (reftable index: 0x{ti:x}) in '{_storage.Name}'");
        long off = (long)raw;
        if (off != 0 && (off & (_clusterSize - 1)) != 0)
            throw new CorruptImageException($"Refblock offset 0x{off:x} unaligned (reftable index: 0x{ti:x}) in '{_storage.Name}'");
        if (off != 0 && off >= _storage.Length && Blocks.TryGet(off) == null)
            throw new CorruptImageException($"Refblock offset 0x{off:x} lies past the end of the image file (reftable index: 0x{ti:x}) in '{_storage.Name}'");
        return off;
    }

    public async ValueTask<ulong> GetRefcountAsync(long clusterIndex, CancellationToken ct = default)
    {
        long off = BlockOffsetFor(clusterIndex, out _);
        if (off == 0)
            return 0;
        var block = await Blocks.GetAsync(off, ct).ConfigureAwait(false);
        return Get(block.Data, _order, clusterIndex & (RefcountsPerBlock - 1));
    }

    /// <summary>
    /// The refcount of a cluster without I/O: false when its refcount block is not cached (then use
    /// <see cref="GetRefcountAsync"/>). Bulk passes over whole tables use it to stay off the async path.
    /// </summary>
    public bool TryGetCachedRefcount(long clusterIndex, out ulong refcount)
    {
        refcount = 0;
        var block = HotBlock(clusterIndex);
        if (block == null)
        {
            long off = BlockOffsetFor(clusterIndex, out _);
            if (off == 0)
                return true;
            block = CachedBlock(off, clusterIndex);
            if (block == null)
                return false;
        }
        refcount = Get(block.Data, _order, clusterIndex & (RefcountsPerBlock - 1));
        return true;
    }

    /// <summary>
    /// <see cref="UpdateAsync"/> for one cluster, without I/O: false, with nothing changed, when its refcount block
    /// is missing or not cached or the new refcount would be out of range (<see cref="UpdateAsync"/> then handles it).
    /// </summary>
    public bool TryUpdateCached(long clusterIndex, long addend, out ulong refcount)
    {
        refcount = 0;
        var block = HotBlock(clusterIndex);
        if (block == null)
        {
            long off = BlockOffsetFor(clusterIndex, out _);
            if (off == 0 || (block = CachedBlock(off, clusterIndex)) == null)
                return false;
        }
        long bi = clusterIndex & (RefcountsPerBlock - 1);
        ulong rc = Get(block.Data, _order, bi);
        ulong nrc = unchecked(rc + (ulong)addend);
        if (addend >= 0 ? nrc < rc || nrc > _max : rc < (ulong)(-addend))
            return false;
        Set(block.Data, _order, bi, nrc);
        block.Dirty = true;
        if (nrc == 0 && clusterIndex < _freeClusterIndex)
            _freeClusterIndex = clusterIndex;
        refcount = nrc;
        return true;
    }

    /// <summary>
    /// The block found last, when it covers <paramref name="clusterIndex"/> and is still the cached one: bulk passes
    /// hit one block many times in a row. A table entry that pointed at a block changes only when the block is freed
    /// or the table replaced, and both take it out of the cache.
    /// </summary>
    private CachedTable? HotBlock(long clusterIndex) =>
        _hot != null && clusterIndex >> _blockBits == _hotTableIndex && _hotRemovals == Blocks.Removals ? _hot : null;

    /// <summary>The cached block at <paramref name="offset"/>, which covers <paramref name="clusterIndex"/> (kept as the hot one).</summary>
    private CachedTable? CachedBlock(long offset, long clusterIndex)
    {
        var block = Blocks.TryGet(offset);
        if (block != null)
            (_hot, _hotTableIndex, _hotRemovals) = (block, clusterIndex >> _blockBits, Blocks.Removals);
        return block;
    }

    /// <summary>Finds <paramref name="count"/> contiguous free clusters without taking them (QEMU's alloc_clusters_noref).</summary>
    private async ValueTask<long> FindFreeAsync(long count, CancellationToken ct)
    {
    retry:
        for (long i = 0; i < count; i++)
        {
            long idx = _freeClusterIndex++;
            if (!TryGetCachedRefcount(idx, out ulong rc))
                rc = await GetRefcountAsync(idx, ct).ConfigureAwait(false);
            if (rc != 0)
                goto retry;
        }
        long start = _freeClusterIndex - count;
        if (((start + count) << _clusterBits) - 1 > MaxHostOffset)
            throw new ImageException($"Image '{_storage.Name}' is full: no host offsets left below 2^56");
        return start;
    }

    /// <summary>Allocates <paramref name="count"/> contiguous clusters with refcount 1 and returns the host offset of the first.</summary>
    public async ValueTask<long> AllocateClustersAsync(long count, CancellationToken ct = default)
    {
        while (true)
        {
            long start = await FindFreeAsync(count, ct).ConfigureAwait(false);
            if (start == 0)
                throw new CorruptImageException($"Preventing invalid allocation of a cluster at offset 0 in '{_storage.Name}'");
            if (await UpdateAsync(start, count, 1, ct).ConfigureAwait(false))
            {
                // Free by the refcounts yet holding metadata: the refcounts are broken; never hand such a cluster out.
                var overlap = _metadata.Overlap(start, count);
                if (overlap != null)
                    throw new CorruptImageException($"Preventing invalid allocation at 0x{start << _clusterBits:x}: the refcounts say it is free but it holds the {overlap} ('{_storage.Name}')");
                return start << _clusterBits;
            }
            // A refcount block was placed where we wanted to allocate: search again.
        }
    }

    /// <summary>Takes clusters at a fixed place when they are free (preallocation); returns how many leading ones it took.</summary>
    public async ValueTask<long> AllocateAtAsync(long offset, long count, CancellationToken ct = default)
    {
        while (true)
        {
            long first = offset >> _clusterBits;
            long n = 0;
            while (n < count && await GetRefcountAsync(first + n, ct).ConfigureAwait(false) == 0)
                n++;
            if (n == 0 || await UpdateAsync(first, n, 1, ct).ConfigureAwait(false))
                return n;
        }
    }

    /// <summary>Space for a compressed cluster: bytes packed after the previous one, as QEMU's qcow2_alloc_bytes.</summary>
    public async ValueTask<long> AllocateBytesAsync(int size, CancellationToken ct = default)
    {
        long offset = _freeByteOffset;
        if (offset != 0 && await GetRefcountAsync(offset >> _clusterBits, ct).ConfigureAwait(false) == _max)
            offset = 0;
        long freeInCluster = _clusterSize - (offset & (_clusterSize - 1));
        while (true)
        {
            if (offset == 0 || freeInCluster < size)
            {
                long newCluster = (await FindFreeAsync(1, ct).ConfigureAwait(false)) << _clusterBits;
                if (newCluster == 0)
                    throw new CorruptImageException($"Preventing invalid allocation of compressed cluster at offset 0 in '{_storage.Name}'");
                if (offset == 0 || RoundUp(offset) != newCluster)
                {
                    offset = newCluster;
                    freeInCluster = _clusterSize;
                }
                else
                {
                    freeInCluster += _clusterSize;
                }
            }
            long first = offset >> _clusterBits, last = (offset + size - 1) >> _clusterBits;
            if (await UpdateAsync(first, last - first + 1, 1, ct).ConfigureAwait(false))
                break;
            offset = 0; // a refcount block took the space: start over
        }
        _freeByteOffset = offset + size;
        if ((_freeByteOffset & (_clusterSize - 1)) == 0)
            _freeByteOffset = 0;
        return offset;
    }

    private long RoundUp(long v) => (v + _clusterSize - 1) & ~((long)_clusterSize - 1);

    /// <summary>
    /// Adds <paramref name="addend"/> to the refcounts of clusters [first, first+count). Returns false when a new
    /// refcount block had to be allocated first (the allocation may have landed in the wanted range, so the
    /// caller searches again, as QEMU's -EAGAIN); nothing was changed in that case for the remaining clusters.
    /// </summary>
    public async ValueTask<bool> UpdateAsync(long first, long count, long addend, CancellationToken ct = default)
    {
        long lastBlock = -1;
        for (long i = 0; i < count; i++)
        {
            long idx = first + i;
            // QEMU's update_refcount goes through alloc_refcount_block (and its event) for each refcount block it touches.
            if (idx >> _blockBits != lastBlock)
            {
                lastBlock = idx >> _blockBits;
                _storage.Event(DebugEvent.RefblockAlloc);
            }
            long off = BlockOffsetFor(idx, out _);
            if (off == 0)
            {
                if (addend < 0)
                    throw new CorruptImageException($"Cannot drop a reference to cluster {idx}: it has no refcount block in '{_storage.Name}'");
                await AllocateBlockAsync(idx, ct).ConfigureAwait(false);
                // Undo what we did so far, and let the caller retry (like QEMU's EAGAIN path).
                if (i > 0)
                    await UpdateAsync(first, i, -addend, ct).ConfigureAwait(false);
                if (_freeClusterIndex > first)
                    _freeClusterIndex = first;
                return false;
            }
            var block = await Blocks.GetAsync(off, ct).ConfigureAwait(false);
            long bi = idx & (RefcountsPerBlock - 1);
            ulong rc = Get(block.Data, _order, bi);
            ulong nrc;
            if (addend >= 0)
            {
                nrc = rc + (ulong)addend;
                if (nrc < rc || nrc > _max)
                    throw new ImageException($"Refcount of cluster {idx} would overflow ({_header.RefcountBits}-bit refcounts) in '{_storage.Name}'");
            }
            else
            {
                if (rc < (ulong)(-addend))
                    throw new CorruptImageException($"Refcount of cluster {idx} would drop below zero in '{_storage.Name}'");
                nrc = rc - (ulong)(-addend);
            }
            Set(block.Data, _order, bi, nrc);
            block.Dirty = true;
            if (nrc == 0 && idx < _freeClusterIndex)
                _freeClusterIndex = idx;
        }
        return true;
    }

    /// <summary>A refcount block for the range containing <paramref name="clusterIndex"/> (QEMU's alloc_refcount_block).</summary>
    private async ValueTask AllocateBlockAsync(long clusterIndex, CancellationToken ct)
    {
        long tableIndex = clusterIndex >> _blockBits;
        long newBlock = (await FindFreeAsync(1, ct).ConfigureAwait(false)) << _clusterBits;
        if (newBlock == 0)
            throw new CorruptImageException($"Preventing invalid allocation of refcount block at offset 0 in '{_storage.Name}'");
        if (_metadata.Overlap(newBlock >> _clusterBits, 1) is { } used)
            throw new CorruptImageException($"Preventing invalid allocation of a refcount block at 0x{newBlock:x}: it holds the {used} ('{_storage.Name}')");
        _metadata.Add(newBlock, _clusterSize, MetadataKind.RefcountBlock);

        if ((newBlock >> (_clusterBits + _blockBits)) == tableIndex)
        {
            // The block describes itself.
            var b = Blocks.GetEmpty(newBlock);
            Set(b.Data, _order, (newBlock >> _clusterBits) & (RefcountsPerBlock - 1), 1);
        }
        else
        {
            // Counted by another block (which may itself need allocating first).
            while (!await UpdateAsync(newBlock >> _clusterBits, 1, 1, ct).ConfigureAwait(false)) { }
            Blocks.GetEmpty(newBlock);
        }

        if (tableIndex < _table.Length)
        {
            _table[tableIndex] = (ulong)newBlock;
            _dirtyTableEntries.Add((int)tableIndex);
            return;
        }

        // The table itself must grow: new blocks and table at the end of the image, describing themselves.
        long blocksUsed = (Math.Max(clusterIndex + 1, (newBlock >> _clusterBits) + 1) + RefcountsPerBlock - 1) >> _blockBits;
        long metaOffset = (blocksUsed << _blockBits) << _clusterBits;
        await GrowTableAsync(metaOffset, 0, false, tableIndex, newBlock, ct).ConfigureAwait(false);
    }

    /// <summary>
    /// Number of refcount blocks (and bytes of blocks plus table) needed to describe <paramref name="clusters"/>
    /// clusters including the refcount structures themselves (QEMU's qcow2_refcount_metadata_size).
    /// </summary>
    public static long MetadataSize(long clusters, int clusterSize, int refcountOrder, bool generous, out long refblockCount)
    {
        long perTableCluster = clusterSize / 8;
        long perBlock = clusterSize * 8L / (1 << refcountOrder);
        long table = 0, blocks = 0, n = 0, last;
        do
        {
            last = n;
            blocks = (clusters + table + blocks + perBlock - 1) / perBlock;
            table = (blocks + perTableCluster - 1) / perTableCluster;
            n = clusters + blocks + table;
            if (n == last && generous)
            {
                clusters += (table + 1) / 2;
                n = 0;
                generous = false;
            }
        } while (n != last);
        refblockCount = blocks;
        return (blocks + table) * clusterSize;
    }

    /// <summary>
    /// Writes a new, larger refcount table plus the blocks that describe it at <paramref name="startOffset"/>,
    /// switches the header to it, and frees the old table (QEMU's qcow2_refcount_area). Returns the end of the area.
    /// </summary>
    public async ValueTask<long> GrowTableAsync(long startOffset, long additionalClusters, bool exactSize,
        long newBlockIndex, long newBlockOffset, CancellationToken ct)
    {
        MetadataSize((startOffset >> _clusterBits) + additionalClusters, _clusterSize, _order, !exactSize, out long totalBlocks);
        if (totalBlocks * 8 > MaxRefcountTableSizeBytes)
            throw new ImageException($"Refcount table of '{_storage.Name}' would exceed {MaxRefcountTableSizeBytes} bytes");
        long areaIndex = (startOffset >> _clusterBits) >> _blockBits;
        long tableSize = exactSize ? totalBlocks : totalBlocks + (totalBlocks + 1) / 2;
        long perCluster = _clusterSize / 8;
        tableSize = (tableSize + perCluster - 1) / perCluster * perCluster;
        long tableClusters = tableSize * 8 / _clusterSize;
        if (tableSize * 8 > MaxRefcountTableSizeBytes)
            throw new ImageException($"Refcount table of '{_storage.Name}' would exceed {MaxRefcountTableSizeBytes} bytes");

        var newTable = new ulong[tableSize];
        Array.Copy(_table, newTable, Math.Min(_table.Length, tableSize));
        if (newBlockOffset != 0)
            newTable[newBlockIndex] = (ulong)newBlockOffset;

        long additionalBlocks = 0;
        for (long i = areaIndex; i < totalBlocks; i++)
            if (newTable[i] == 0)
                additionalBlocks++;
        long tableOffset = startOffset + additionalBlocks * _clusterSize;
        long endOffset = tableOffset + tableClusters * _clusterSize;

        long blockOffset = startOffset;
        for (long i = areaIndex; i < totalBlocks; i++)
        {
            CachedTable block;
            if (newTable[i] != 0)
                block = await Blocks.GetAsync((long)(newTable[i] & RefTableOffsetMask), ct).ConfigureAwait(false);
            else
            {
                block = Blocks.GetEmpty(blockOffset);
                _metadata.Add(blockOffset, _clusterSize, MetadataKind.RefcountBlock);
                newTable[i] = (ulong)blockOffset;
                blockOffset += _clusterSize;
            }
            long firstCovered = (i << _blockBits) << _clusterBits;
            if (firstCovered < endOffset)
            {
                long j = firstCovered < startOffset ? (startOffset - firstCovered) >> _clusterBits : 0;
                long end = Math.Min((endOffset - firstCovered) >> _clusterBits, RefcountsPerBlock);
                for (; j < end; j++)
                    Set(block.Data, _order, j, 1);
                block.Dirty = true;
            }
        }

        // Order: new blocks and new table durable before the header points at them.
        await Blocks.WriteDirtyAsync(ct).ConfigureAwait(false);
        var raw = new byte[tableSize * 8];
        for (long i = 0; i < tableSize; i++)
            BinaryPrimitives.WriteUInt64BigEndian(raw.AsSpan((int)(i * 8)), newTable[i]);
        await _storage.WriteAsync(raw, tableOffset, ct).ConfigureAwait(false);
        await _storage.FlushAsync(ct).ConfigureAwait(false);

        var hdr = new byte[12];
        BinaryPrimitives.WriteUInt64BigEndian(hdr, (ulong)tableOffset);
        BinaryPrimitives.WriteUInt32BigEndian(hdr.AsSpan(8), (uint)tableClusters);
        await _storage.WriteAsync(hdr, 48, ct).ConfigureAwait(false);
        await _storage.FlushAsync(ct).ConfigureAwait(false);

        long oldOffset = _header.RefcountTableOffset;
        long oldClusters = _header.RefcountTableClusters;
        _table = newTable;
        _dirtyTableEntries.Clear(); // the whole new table was just written
        _header.RefcountTableOffset = tableOffset;
        _header.RefcountTableClusters = (int)tableClusters;
        _metadata.Remove(oldOffset, oldClusters * _clusterSize);
        _metadata.Add(tableOffset, tableClusters * _clusterSize, MetadataKind.RefcountTable);
        // Nothing references the old table any more once the header switched: free it at once.
        await UpdateAsync(oldOffset >> _clusterBits, oldClusters, -1, ct).ConfigureAwait(false);
        return endOffset;
    }

    /// <summary>
    /// Remembers clusters whose last reference is being dropped. They are freed only after the L2/L1 change
    /// that dropped them is durable (see <see cref="ApplyPendingFreesAsync"/>), so that a crash can never
    /// leave an on-disk reference to a cluster that was already reused.
    /// </summary>
    public void DeferFree(long offset, long length) => _pendingFrees.Add((offset, length));

    public async ValueTask ApplyPendingFreesAsync(Action<long>? onFreed, CancellationToken ct)
    {
        if (_pendingFrees.Count == 0)
            return;
        var frees = _pendingFrees.ToArray();
        _pendingFrees.Clear();
        foreach (var (offset, length) in frees)
        {
            long first = offset >> _clusterBits, last = (offset + length - 1) >> _clusterBits;
            await UpdateAsync(first, last - first + 1, -1, ct).ConfigureAwait(false);
            if (onFreed != null)
                for (long c = first; c <= last; c++)
                    if (await GetRefcountAsync(c, ct).ConfigureAwait(false) == 0)
                        onFreed(c << _clusterBits);
        }
    }

    /// <summary>Writes dirty refcount blocks, then (after a flush, so they never point at unwritten blocks) dirty table entries.</summary>
    public async ValueTask WriteDirtyAsync(CancellationToken ct)
    {
        await Blocks.WriteDirtyAsync(ct).ConfigureAwait(false);
        if (_dirtyTableEntries.Count == 0)
            return;
        await _storage.FlushAsync(ct).ConfigureAwait(false);
        var buf = new byte[8];
        foreach (int i in _dirtyTableEntries)
        {
            BinaryPrimitives.WriteUInt64BigEndian(buf, _table[i]);
            await _storage.WriteAsync(buf, _header.RefcountTableOffset + i * 8L, ct).ConfigureAwait(false);
        }
        _dirtyTableEntries.Clear();
    }

    /// <summary>Resets the allocator's search start (after external changes such as a repair).</summary>
    public void ResetFreeIndex() => _freeClusterIndex = 0;

    /// <summary>Takes a table the checker rewrote on disk; drops cached blocks and the allocator's position (clean state assumed).</summary>
    public void ReplaceTable(ulong[] table)
    {
        _table = table;
        _dirtyTableEntries.Clear();
        Blocks.Clear();
        _freeClusterIndex = 0;
        _freeByteOffset = 0;
    }
}
