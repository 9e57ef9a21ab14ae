using System.Buffers.Binary;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

public static partial class Qcow2Check
{
    private sealed partial class Run
    {
        /// <summary>Tables kept in memory for their next references (QEMU reads them again each time).</summary>
        private const long L2KeepLimit = 256L << 20;

        /// <summary>Bytes of L1/L2 tables the current pass may still read (bounds the work on hostile images).</summary>
        private long _readBudget;

        /// <summary>Bytes of L2 tables the pass may still process again for their further references.</summary>
        private long _replayBudget;

        /// <summary>References each L2 table (inside the file) still has to come in this pass, by (offset, active).</summary>
        private Dictionary<(long Offset, bool Active), long> _l2Refs = [];

        /// <summary>L2 tables already counted once, and the bytes of those kept for their next references.</summary>
        private HashSet<(long Offset, bool Active)> _l2Visited = [];
        private Dictionary<(long Offset, bool Active), byte[]> _l2Kept = [];
        private long _l2KeptBytes;

        /// <summary>
        /// References past the replay budget (hostile images only): counted together at the end of the walk, by
        /// multiplying, so the counts stay exact while only the order of the messages changes.
        /// </summary>
        private Dictionary<(long Offset, bool Active), long> _l2Deferred = [];
        private List<(long Offset, bool Active)> _l2DeferredOrder = [];

        private long WorkBudget => 16 * Math.Max(_file.Length, 0) + BudgetBase;

        /// <summary>
        /// Before counting: reads the L1 tables once to learn how often each L2 table is referenced, so that a
        /// table referenced again can be kept in memory until its last reference instead of being read again.
        /// </summary>
        private async ValueTask BeginTableWalkAsync(List<(long Offset, uint Size, bool Active)> tables, CancellationToken ct)
        {
            _readBudget = WorkBudget;
            _replayBudget = WorkBudget;
            _l2Refs = [];
            _l2Visited = [];
            _l2Kept = [];
            _l2KeptBytes = 0;
            _l2Deferred = [];
            _l2DeferredOrder = [];
            foreach (var (offset, size, active) in tables)
            {
                await ForEachL1EntryAsync(offset, size, e =>
                {
                    long l2Offset = (long)(e & L1OffsetMask);
                    if (l2Offset < _file.Length)
                        _l2Refs[(l2Offset, active)] = _l2Refs.GetValueOrDefault((l2Offset, active)) + 1;
                    return ValueTask.CompletedTask;
                }, ct).ConfigureAwait(false);
            }
            _readBudget = WorkBudget;
        }

        /// <summary>After counting: the references deferred past the budget, each table read once more.</summary>
        private async ValueTask EndTableWalkAsync(Fix fix, CancellationToken ct)
        {
            foreach (var key in _l2DeferredOrder)
            {
                var table = _l2Kept.GetValueOrDefault(key);
                if (table == null)
                {
                    table = new byte[_cs];
                    await _file.ReadAsync(table, key.Offset, ct).ConfigureAwait(false);
                }
                await CheckL2Async(key.Offset, table, fix, key.Active, _l2Deferred[key], ct).ConfigureAwait(false);
            }
            _l2Refs = [];
            _l2Visited = [];
            _l2Kept = [];
            _l2Deferred = [];
            _l2DeferredOrder = [];
        }

        /// <summary>Calls <paramref name="action"/> for every non-zero entry of an L1 table (the part past the end of the file reads as zeroes).</summary>
        private async ValueTask ForEachL1EntryAsync(long l1Offset, uint l1Size, Func<ulong, ValueTask> action, CancellationToken ct)
        {
            const int chunk = 64 * 1024;
            for (long start = 0; start < l1Size; start += chunk)
            {
                int n = (int)Math.Min(chunk, l1Size - start);
                var raw = await ReadTableAsync(l1Offset + start * 8, n * 8, ct).ConfigureAwait(false);
                if (raw == null)
                    break;
                for (int j = 0; j < n; j++)
                {
                    ulong e = BE64(raw, j * 8);
                    if (e != 0)
                        await action(e).ConfigureAwait(false);
                }
            }
        }

        /// <summary>check_refcounts_l1.</summary>
        private async ValueTask CheckL1Async(long l1Offset, uint l1Size, Fix fix, bool active, CancellationToken ct)
        {
            if (l1Size == 0)
                return;
            Inc(l1Offset, l1Size * 8L, 1);
            await ForEachL1EntryAsync(l1Offset, l1Size, async e =>
            {
                if ((e & L1ReservedMask) != 0)
                {
                    Log($"ERROR found L1 entry with reserved bits set: {e:x}");
                    _res.Corruptions++;
                }
                long l2Offset = (long)(e & L1OffsetMask);
                Inc(l2Offset, _cs, 1);
                if ((l2Offset & (_cs - 1)) != 0)
                {
                    Log($"ERROR l2_offset={l2Offset:x}: Table is not cluster aligned; L1 entry corrupted");
                    _res.Corruptions++;
                }
                if (l2Offset >= _file.Length)
                    return; // reads as zeroes: no references
                await CountL2Async(l2Offset, fix, active, ct).ConfigureAwait(false);
            }, ct).ConfigureAwait(false);
        }

        /// <summary>One reference to an L2 table: counted in place, from memory when the table was kept.</summary>
        private async ValueTask CountL2Async(long l2Offset, Fix fix, bool active, CancellationToken ct)
        {
            var key = (l2Offset, active);
            long remaining = _l2Refs.GetValueOrDefault(key, 1) - 1;
            _l2Refs[key] = remaining;
            byte[]? table;
            if (_l2Visited.Add(key))
            {
                table = await ReadTableAsync(l2Offset, _cs, ct).ConfigureAwait(false);
                if (table == null)
                    return;
            }
            else
            {
                _replayBudget -= _cs;
                if (_replayBudget < 0)
                {
                    if (_l2Deferred.TryGetValue(key, out long n))
                        _l2Deferred[key] = n + 1;
                    else
                    {
                        _l2Deferred[key] = 1;
                        _l2DeferredOrder.Add(key);
                    }
                    return;
                }
                table = _l2Kept.GetValueOrDefault(key);
                if (table == null)
                {
                    table = new byte[_cs];
                    await _file.ReadAsync(table, l2Offset, ct).ConfigureAwait(false);
                }
            }
            await CheckL2Async(l2Offset, table, fix, active, 1, ct).ConfigureAwait(false);

            if (remaining > 0 && !_l2Kept.ContainsKey(key) && _l2KeptBytes + _cs <= L2KeepLimit)
            {
                _l2Kept[key] = table;
                _l2KeptBytes += _cs;
            }
            else if (remaining <= 0 && !_l2Deferred.ContainsKey(key) && _l2Kept.Remove(key))
            {
                _l2KeptBytes -= _cs;
            }
        }

        /// <summary>
        /// Reads a table of <paramref name="length"/> bytes, charging it to the pass's budget; null when it starts
        /// at or past the end of the file (it then reads as zeroes: nothing to count).
        /// </summary>
        private async ValueTask<byte[]?> ReadTableAsync(long offset, int length, CancellationToken ct)
        {
            ct.ThrowIfCancellationRequested();
            if (offset < 0 || offset >= _file.Length)
                return null;
            _readBudget -= length;
            if (_readBudget < 0)
            {
                Log("ERROR: the image references more metadata than its size allows; giving up");
                _res.CheckErrors++;
                throw new CheckFailedException(EFBIG);
            }
            var buf = new byte[length];
            await _file.ReadAsync(buf, offset, ct).ConfigureAwait(false);
            return buf;
        }

        /// <summary>check_refcounts_l2 on the table read from <paramref name="l2Offset"/>, for <paramref name="mult"/> references to it.</summary>
        private async ValueTask CheckL2Async(long l2Offset, byte[] table, Fix fix, bool active, long mult, CancellationToken ct)
        {
            bool frag = active;
            long nextContiguous = 0;
            ulong offsetMask = (1UL << (62 - (_cb - 8))) - 1;
            for (int i = 0; i < _l2Entries; i++)
            {
                ulong e = BE64(table, i * _entrySize);
                ulong bm = _ext ? BE64(table, i * 16 + 8) : 0;
                if (e == 0 && bm == 0)
                    continue;
                var type = TypeOf(e);
                if (type != L2Type.Compressed && (e & L2StandardReservedMask) != 0)
                    Corrupt(mult, $"ERROR found l2 entry with reserved bits set: {e:x}");

                switch (type)
                {
                    case L2Type.Compressed:
                    {
                        if ((e & OflagCopied) != 0)
                        {
                            Corrupt(mult, $"ERROR: coffset=0x{e & offsetMask:x}: copied flag must never be set for compressed clusters");
                            e &= ~OflagCopied;
                        }
                        if (bm != 0)
                        {
                            Corrupt(mult, $"ERROR compressed cluster {i} with non-zero subcluster allocation bitmap, entry=0x{e:x}");
                            break;
                        }
                        long coffset = (long)(e & offsetMask);
                        long nbSectors = (long)((e >> (62 - (_cb - 8))) & ((1UL << (_cb - 8)) - 1)) + 1;
                        long csize = nbSectors * CompressedSectorSize - (coffset & (CompressedSectorSize - 1));
                        Inc(coffset, csize, mult);
                        if (frag)
                        {
                            _res.Allocated += mult;
                            _res.Compressed += mult;
                            _res.Fragmented += mult; // compressed clusters are fragmented by nature
                        }
                        break;
                    }
                    case L2Type.ZeroAlloc:
                    case L2Type.Normal:
                    {
                        long offset = (long)(e & L2OffsetMask);
                        if (((bm >> 32) & bm) != 0)
                            Corrupt(mult, $"ERROR offset={offset:x}: Allocated cluster has corrupted subcluster allocation bitmap");
                        if ((offset & (_cs - 1)) != 0)
                        {
                            _res.Corruptions += mult;
                            bool containsData = _ext ? (bm & SubclusterAllocMask) != 0 : (e & OflagZero) == 0;
                            if (!containsData)
                            {
                                bool repair = Fixes(fix, Fix.Errors);
                                string what = $"offset={offset:x}: Preallocated cluster is not properly aligned; L2 entry corrupted.";
                                Log((repair ? "Repairing " : "ERROR ") + what);
                                if (repair)
                                {
                                    if (await FixL2EntryByZeroAsync(l2Offset, table, i, active, ct).ConfigureAwait(false))
                                    {
                                        // Later references to this table see the entry fixed.
                                        _res.Corruptions -= mult;
                                        _res.CorruptionsFixed++;
                                        continue;
                                    }
                                }
                                Log((repair ? "Repairing " : "ERROR ") + what, mult - 1);
                            }
                            else
                            {
                                Log($"ERROR offset={offset:x}: Data cluster is not properly aligned; L2 entry corrupted.", mult);
                            }
                        }
                        if (frag)
                        {
                            _res.Allocated += mult;
                            if (nextContiguous != 0 && offset != nextContiguous)
                                _res.Fragmented += mult;
                            nextContiguous = offset + _cs;
                        }
                        Inc(offset, _cs, mult);
                        break;
                    }
                    case L2Type.Unallocated:
                        if ((bm & SubclusterAllocMask) != 0)
                            Corrupt(mult, "ERROR: Unallocated cluster has non-zero subcluster allocation map");
                        break;
                }
            }
        }

        /// <summary>fix_l2_entry_by_zero: turns a misaligned preallocated zero cluster into a plain zero cluster.</summary>
        private async ValueTask<bool> FixL2EntryByZeroAsync(long l2Offset, byte[] table, int index, bool active, CancellationToken ct)
        {
            int at = index * _entrySize;
            if (_ext)
            {
                ulong bm = BE64(table, at + 8);
                bm |= bm << 32; // allocated subclusters become zero
                bm &= SubclusterZeroMask;
                BinaryPrimitives.WriteUInt64BigEndian(table.AsSpan(at + 8), bm);
                BinaryPrimitives.WriteUInt64BigEndian(table.AsSpan(at), 0);
            }
            else
            {
                BinaryPrimitives.WriteUInt64BigEndian(table.AsSpan(at), OflagZero);
            }
            if (!await PreWriteOverlapCheckAsync(active ? Meta.ActiveL2 : Meta.None, l2Offset + at, _entrySize, ct).ConfigureAwait(false))
            {
                // Something is seriously wrong: QEMU stops checking here.
                Log("ERROR: Overlap check failed");
                _res.CheckErrors++;
                throw new CheckFailedException(EIO);
            }
            try
            {
                await _file.WriteAsync(table.AsMemory(at, _entrySize), l2Offset + at, ct).ConfigureAwait(false);
                await _file.FlushAsync(ct).ConfigureAwait(false);
                _wrote = true;
                return true;
            }
            catch (IOException e)
            {
                Log($"ERROR: Failed to overwrite L2 table entry: {e.Message}");
                _res.CheckErrors++;
                return false;
            }
        }

        private enum L2Type { Unallocated, ZeroPlain, ZeroAlloc, Normal, Compressed }

        /// <summary>qcow2_get_cluster_type (no external data file).</summary>
        private L2Type TypeOf(ulong e)
        {
            if ((e & OflagCompressed) != 0)
                return L2Type.Compressed;
            if ((e & OflagZero) != 0 && !_ext)
                return (e & L2OffsetMask) != 0 ? L2Type.ZeroAlloc : L2Type.ZeroPlain;
            return (e & L2OffsetMask) != 0 ? L2Type.Normal : L2Type.Unallocated;
        }
    }
}
