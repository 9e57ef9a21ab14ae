using Strata.Images.Storage;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

public static partial class Qcow2Check
{
    /// <summary>QEMU's BDRV_MAX_LENGTH: requests reaching past it fail with -EIO (reads past the end of the file give zeroes).</summary>
    private const ulong MaxRequestOffset = 0x7FFFFFFFC0000000UL;

    /// <summary>
    /// QEMU's in-memory refcount table: one refcount per host cluster, in the image's refcount width and on-disk
    /// layout, split into refblock-sized chunks that exist only where some cluster is referenced (so sparse or
    /// hostile files cost memory only for what they reference, and a rebuild writes chunks as refblocks).
    /// </summary>
    private sealed class RefcountArray(int clusterSize, int order)
    {
        private readonly Dictionary<long, byte[]> _chunks = [];
        private readonly int _blockBits = BitLog2(clusterSize) + 3 - order;

        private static int BitLog2(int v) => System.Numerics.BitOperations.Log2((uint)v);

        private long _lastIndex = -1;
        private byte[]? _lastChunk;

        /// <summary>The chunk of refblock <paramref name="index"/>, or null when all its refcounts are 0.</summary>
        public byte[]? Chunk(long index)
        {
            if (index == _lastIndex)
                return _lastChunk;
            var c = _chunks.GetValueOrDefault(index);
            if (c != null)
                (_lastIndex, _lastChunk) = (index, c);
            return c;
        }

        public ulong Get(long cluster)
        {
            var c = Chunk(cluster >> _blockBits);
            return c == null ? 0 : RefcountTable.Get(c, order, cluster & ((1L << _blockBits) - 1));
        }

        public void Set(long cluster, ulong value)
        {
            long index = cluster >> _blockBits;
            var c = Chunk(index);
            if (c == null)
            {
                if (value == 0)
                    return;
                c = new byte[clusterSize];
                _chunks[index] = c;
                (_lastIndex, _lastChunk) = (index, c);
            }
            RefcountTable.Set(c, order, cluster & ((1L << _blockBits) - 1), value);
        }

        public void Clear()
        {
            _chunks.Clear();
            (_lastIndex, _lastChunk) = (-1, null);
        }
    }

    private enum BlockState { Absent, Unaligned, Unreadable, Present }

    /// <summary>A refcount block as the refcount table describes it.</summary>
    private readonly record struct StoredBlock(BlockState State, long Offset, byte[]? Data);

    /// <summary>
    /// The refcounts stored in the image (QEMU's qcow2_get_refcount through its refblock cache), read straight
    /// from the file: a table entry of 0 or past the table means refcount 0; reserved bits are ignored.
    /// Repaired blocks are written back the way QEMU's 4-entry refcount block cache writes them: when they fall
    /// out of the 4 most recently used blocks, or at the end (<see cref="FlushAsync"/>); dropped when the check
    /// ends on a fatal corruption (<see cref="DropDirty"/>), as QEMU then never flushes its cache.
    /// </summary>
    private sealed class StoredRefcounts(IStorage file, int clusterSize, int order, ulong[] table)
    {
        /// <summary>QEMU's MIN_REFCOUNT_CACHE_SIZE, the refcount cache qemu-img check runs with.</summary>
        private const int QemuCacheEntries = 4;

        private readonly Dictionary<long, byte[]> _cache = [];
        private readonly Dictionary<long, byte[]> _dirty = [];
        private readonly List<long> _recent = [];
        private readonly int _capacity = Math.Max(4, (16 << 20) / clusterSize);
        private readonly int _blockBits = System.Numerics.BitOperations.Log2((uint)clusterSize) + 3 - order;

        public ulong[] Table { get; } = table;

        /// <summary>Writes a repaired block (overlap check included); set by the owner.</summary>
        public Func<long, byte[], CancellationToken, ValueTask>? WriteBack { get; set; }

        public async ValueTask<StoredBlock> LoadAsync(long tableIndex, CancellationToken ct)
        {
            if (tableIndex < 0 || tableIndex >= Table.Length)
                return new StoredBlock(BlockState.Absent, 0, null);
            long off = (long)(Table[tableIndex] & RefTableOffsetMask);
            if (off == 0)
                return new StoredBlock(BlockState.Absent, 0, null);
            if ((off & (clusterSize - 1)) != 0)
                return new StoredBlock(BlockState.Unaligned, off, null);
            if ((ulong)off > MaxRequestOffset - (ulong)clusterSize)
                return new StoredBlock(BlockState.Unreadable, off, null); // QEMU's block layer refuses the read (-EIO)
            if (!_dirty.TryGetValue(off, out var data) && !_cache.TryGetValue(off, out data))
            {
                data = new byte[clusterSize];
                if (off < file.Length)
                    await file.ReadAsync(data, off, ct).ConfigureAwait(false);
                if (_cache.Count >= _capacity)
                    _cache.Clear();
                _cache[off] = data;
            }
            await TouchAsync(off, ct).ConfigureAwait(false);
            (_recentOffset, _recentData) = (off, data);
            return new StoredBlock(BlockState.Present, off, data);
        }

        /// <summary>The stored refcount of a cluster, or null when its refcount block offset is unaligned (-EIO).</summary>
        public ValueTask<ulong?> GetAsync(long cluster, CancellationToken ct) =>
            TryGetRecent(cluster, out ulong value) ? ValueTask.FromResult<ulong?>(value) : GetSlowAsync(cluster, ct);

        private long _recentOffset = -1;
        private byte[]? _recentData;

        /// <summary>The refcount when it lies in the most recently used block (no I/O; the cache order does not change).</summary>
        public bool TryGetRecent(long cluster, out ulong value)
        {
            long ti = cluster >> _blockBits;
            if (_recentData != null && ti >= 0 && ti < Table.Length && (long)(Table[ti] & RefTableOffsetMask) == _recentOffset)
            {
                value = RefcountTable.Get(_recentData, order, cluster & ((1L << _blockBits) - 1));
                return true;
            }
            value = 0;
            return false;
        }

        private async ValueTask<ulong?> GetSlowAsync(long cluster, CancellationToken ct)
        {
            var b = await LoadAsync(cluster >> _blockBits, ct).ConfigureAwait(false);
            return b.State switch
            {
                BlockState.Absent => 0,
                BlockState.Present => RefcountTable.Get(b.Data, order, cluster & ((1L << _blockBits) - 1)),
                _ => null,
            };
        }

        /// <summary>The block (just loaded) was changed and must reach the file.</summary>
        public void MarkDirty(long offset, byte[] data) => _dirty[offset] = data;

        public bool HasDirty => _dirty.Count > 0;

        private async ValueTask TouchAsync(long offset, CancellationToken ct)
        {
            if (_recent.Count > 0 && _recent[0] == offset)
                return;
            _recent.Remove(offset);
            _recent.Insert(0, offset);
            if (_recent.Count <= QemuCacheEntries)
                return;
            long victim = _recent[^1];
            _recent.RemoveAt(_recent.Count - 1);
            if (_dirty.Remove(victim, out var data))
            {
                _cache[victim] = data;
                await WriteBack!(victim, data, ct).ConfigureAwait(false);
            }
        }

        /// <summary>Writes every repaired block through <paramref name="write"/>; a block it refuses is dropped.</summary>
        public async ValueTask FlushAsync(Func<long, byte[], CancellationToken, ValueTask<bool>> write, CancellationToken ct)
        {
            foreach (var off in _dirty.Keys.Order().ToList())
            {
                var data = _dirty[off];
                _dirty.Remove(off);
                if (await write(off, data, ct).ConfigureAwait(false))
                    _cache[off] = data;
                else
                    _cache.Remove(off);
                if (off == _recentOffset)
                    (_recentOffset, _recentData) = (-1, null);
            }
        }

        /// <summary>Forgets unwritten repairs (and the cached copies they changed).</summary>
        public void DropDirty()
        {
            (_recentOffset, _recentData) = (-1, null);
            foreach (var off in _dirty.Keys)
                _cache.Remove(off);
            _dirty.Clear();
        }
    }
}
