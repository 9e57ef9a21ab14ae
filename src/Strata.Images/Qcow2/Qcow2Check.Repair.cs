using System.Buffers.Binary;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

public static partial class Qcow2Check
{
    private sealed partial class Run
    {
        /// <summary>
        /// compare_refcounts: stored refcount against counted references for every cluster of the in-memory table,
        /// repairing what <paramref name="fix"/> allows. A stored refcount of 0 for a referenced cluster cannot be
        /// fixed in place (its refcount block may not exist): it asks for a rebuild. Returns the highest cluster
        /// with a stored refcount or a reference.
        /// </summary>
        private async ValueTask<long> CompareRefcountsAsync(Fix fix, CancellationToken ct)
        {
            long highest = 0;
            long blocks = (_nb + _perBlock - 1) >> _blockBits;
            var freed = new List<long>();
            for (long ti = 0; ti < blocks; ti++)
            {
                ct.ThrowIfCancellationRequested();
                byte[]? mine = _imrt.Chunk(ti);
                var stored = await _stored.LoadAsync(ti, ct).ConfigureAwait(false);
                if (mine == null && stored.State == BlockState.Absent)
                    continue;
                long first = ti << _blockBits, end = Math.Min(_nb, first + _perBlock);
                if (stored.State is BlockState.Unaligned or BlockState.Unreadable)
                {
                    if (stored.State == BlockState.Unaligned)
                        await SignalCorruptionAsync($"Refblock offset {AltHex((ulong)stored.Offset)} unaligned (reftable index: {AltHex((ulong)ti)})", ct).ConfigureAwait(false);
                    // Clusters whose refcount cannot be read are skipped entirely (not even for the image end).
                    for (long k = first; k < end; k++)
                        Log($"Can't get refcount for cluster {k}: {EIO}");
                    _res.CheckErrors += end - first;
                    continue;
                }

                bool dirty = false;
                freed.Clear();
                for (long k = first; k < end; k++)
                {
                    long bi = k - first;
                    ulong r1 = stored.Data == null ? 0 : RefcountTable.Get(stored.Data, _order, bi);
                    ulong r2 = mine == null ? 0 : RefcountTable.Get(mine, _order, bi);
                    if (r1 > 0 || r2 > 0)
                        highest = k;
                    if (r1 == r2)
                        continue;

                    bool fixLeak = false, fixCorruption = false;
                    if (r1 == 0)
                        _rebuild = true;
                    else if (r1 > r2 && Fixes(fix, Fix.Leaks))
                        fixLeak = true;
                    else if (r1 < r2 && Fixes(fix, Fix.Errors))
                        fixCorruption = true;
                    string what = fixLeak || fixCorruption ? "Repairing" : r1 < r2 ? "ERROR" : "Leaked";
                    Log($"{what} cluster {k} refcount={r1} reference={r2}");
                    if (fixLeak || fixCorruption)
                    {
                        RefcountTable.Set(stored.Data!, _order, bi, r2);
                        dirty = true;
                        if (r2 == 0)
                            freed.Add(k);
                        if (fixLeak)
                            _res.LeaksFixed++;
                        else
                            _res.CorruptionsFixed++;
                        continue;
                    }
                    if (r1 < r2)
                        _res.Corruptions++;
                    else
                        _res.Leaks++;
                }

                if (dirty)
                {
                    // QEMU discards freed clusters at once; the block itself goes out through its cache.
                    _stored.MarkDirty(stored.Offset, stored.Data!);
                    await DiscardClustersAsync(freed, ct).ConfigureAwait(false);
                }
            }
            return highest;
        }

        /// <summary>Writes a repaired refcount block (QEMU's refblock cache flush, with its overlap check).</summary>
        private async ValueTask WriteRefblockAsync(long offset, byte[] data, CancellationToken ct)
        {
            if (!await PreWriteOverlapCheckAsync(Meta.RefcountBlock, offset, _cs, ct).ConfigureAwait(false))
            {
                _res.CheckErrors++;
                throw new CheckFailedException(EIO);
            }
            await _file.WriteAsync(data, offset, ct).ConfigureAwait(false);
            _wrote = true;
        }

        /// <summary>
        /// The end of the refcount pass: repaired refcount blocks still cached are written, unless a fatal
        /// corruption was signalled (QEMU then never flushes its cache, and the repairs are lost).
        /// </summary>
        private async ValueTask FinishStoredRefcountsAsync(CancellationToken ct)
        {
            if (_fatalCorruption)
            {
                _stored.DropDirty();
                return;
            }
            // QEMU writes these later (when the image is flushed or closed); a block its overlap check refuses then
            // marks the image corrupt and is lost, without changing the check's result.
            await _stored.FlushAsync(async (offset, data, c) =>
            {
                if (_fatalCorruption || !await PreWriteOverlapCheckAsync(Meta.RefcountBlock, offset, _cs, c).ConfigureAwait(false))
                    return false;
                await _file.WriteAsync(data, offset, c).ConfigureAwait(false);
                _wrote = true;
                return true;
            }, ct).ConfigureAwait(false);
        }

        /// <summary>Freed clusters are discarded in the file, as QEMU does (its check always passes discards down).</summary>
        private async ValueTask DiscardClustersAsync(List<long> clusters, CancellationToken ct)
        {
            int i = 0;
            while (i < clusters.Count)
            {
                int n = 1;
                while (i + n < clusters.Count && clusters[i + n] == clusters[i] + n)
                    n++;
                long off = clusters[i] << _cb, len = (long)n << _cb;
                if (off < _file.Length)
                    await _file.DiscardAsync(off, Math.Min(len, _file.Length - off), ct).ConfigureAwait(false);
                i += n;
            }
        }

        /// <summary>qcow2_signal_corruption as the check meets it: reported once; when writable the image is marked corrupt.</summary>
        private async ValueTask SignalCorruptionAsync(string what, CancellationToken ct)
        {
            if (_signaledCorruption)
                return;
            _signaledCorruption = true;
            if (_img.IsReadOnly)
            {
                Log($"qcow2: Image is corrupt: {what}; further non-fatal corruption events will be suppressed");
                return;
            }
            Log($"qcow2: Marking image as corrupt: {what}; further corruption events will be suppressed");
            _fatalCorruption = true;
            await _img.MarkCorruptForCheckAsync(ct).ConfigureAwait(false);
        }

        /// <summary>
        /// alloc_clusters_imrt: the first run of <paramref name="count"/> clusters free in the in-memory table at or
        /// after <paramref name="firstFree"/> (growing the table past its end if needed), marked used with refcount 1.
        /// <paramref name="firstFree"/> moves to the first gap seen.
        /// </summary>
        private long AllocClustersImrt(long count, ref long firstFree)
        {
            long cluster = firstFree, contiguous = 0;
            bool firstGap = true;
            while (cluster < _nb && contiguous < count)
            {
                long chunkIndex = cluster >> _blockBits;
                if (_imrt.Chunk(chunkIndex) == null)
                {
                    // The rest of this block (within the table) is free.
                    if (firstGap)
                    {
                        firstFree = cluster;
                        firstGap = false;
                    }
                    long chunkEnd = Math.Min((chunkIndex + 1) << _blockBits, _nb);
                    long take = Math.Min(chunkEnd - cluster, count - contiguous);
                    contiguous += take;
                    cluster += take;
                    continue;
                }
                if (_imrt.Get(cluster) == 0)
                {
                    contiguous++;
                    if (firstGap)
                    {
                        firstFree = cluster;
                        firstGap = false;
                    }
                }
                else
                {
                    contiguous = 0;
                }
                cluster++;
            }
            if (contiguous < count)
                _nb = cluster + count - contiguous; // append free clusters at the end of the image
            cluster -= contiguous;
            for (long i = 0; i < count; i++)
                _imrt.Set(cluster + i, 1);
            return cluster << _cb;
        }

        /// <summary>
        /// rebuild_refcounts_write_refblocks: for every refcount block range in [first, end) holding a used cluster,
        /// allocates the block (in the in-memory table) unless the new table already has it, and writes the range of
        /// the in-memory table there. Returns whether the new table had to grow.
        /// </summary>
        private async ValueTask<bool> WriteRefblocksAsync(long first, long end, RebuildTable rt, CancellationToken ct)
        {
            long firstFree = 0;
            bool grown = false;
            for (long cluster = first; cluster < end; cluster++)
            {
                long rbIndex = cluster >> _blockBits;
                long rbStart = rbIndex << _blockBits;
                if (_imrt.Chunk(rbIndex) == null)
                {
                    cluster = rbStart + _perBlock - 1; // nothing used in this block
                    continue;
                }
                if (_imrt.Get(cluster) == 0)
                    continue;

                long rbOffset;
                if (rt.Entries > rbIndex && rt.Table[rbIndex] != 0)
                {
                    rbOffset = (long)rt.Table[rbIndex];
                }
                else
                {
                    // Never allocate in a block that was already written.
                    if (firstFree < rbStart)
                        firstFree = rbStart;
                    rbOffset = AllocClustersImrt(1, ref firstFree);
                    long rbCluster = rbOffset >> _cb;
                    if (rbCluster >= end)
                        end = rbCluster + 1; // the block counting this block must be written too
                    if (rt.Entries <= rbIndex)
                    {
                        long entries = (((rbIndex + 1) * 8 + _cs - 1) & ~((long)_cs - 1)) / 8;
                        if (entries > int.MaxValue / 8)
                            throw Fail(EFBIG, "ERROR allocating reftable memory");
                        Array.Resize(ref rt.Table, (int)entries);
                        rt.Entries = entries;
                        grown = true;
                    }
                    rt.Table[rbIndex] = (ulong)rbOffset;
                }

                var data = _imrt.Chunk(rbIndex)!;
                if (!await PreWriteOverlapCheckAsync(Meta.None, rbOffset, _cs, ct).ConfigureAwait(false))
                    throw Fail(EIO, $"ERROR writing refblock: {EIO}");
                try
                {
                    await _file.WriteAsync(data, rbOffset, ct).ConfigureAwait(false);
                }
                catch (IOException e)
                {
                    throw Fail(EIO, $"ERROR writing refblock: {e.Message}");
                }
                _wrote = true;
                cluster = rbStart + _perBlock - 1; // this block is done
            }
            return grown;
        }

        private sealed class RebuildTable
        {
            public ulong[] Table = [];
            public long Entries;
        }

        private CheckFailedException Fail(string reason, string message)
        {
            Log($"qemu-img: {message}");
            _res.CheckErrors++;
            return new CheckFailedException(reason);
        }

        /// <summary>
        /// rebuild_refcount_structure: writes new refcount blocks and a new refcount table built from the in-memory
        /// table alone, allocating them in it, and switches the header to them. The old structures are left
        /// leaked; the caller's next pass frees them.
        /// </summary>
        private async ValueTask RebuildRefcountStructureAsync(CancellationToken ct)
        {
            var rt = new RebuildTable();
            bool changed = await WriteRefblocksAsync(0, _nb, rt, ct).ConfigureAwait(false);
            if (!changed)
                throw Fail(EIO, "ERROR rebuilding the refcount structure: nothing is in use");

            long reftableOffset, reftableClusters;
            do
            {
                long reftableLength = rt.Entries * 8;
                reftableClusters = (reftableLength + _cs - 1) >> _cb;
                long firstFree = 0;
                reftableOffset = AllocClustersImrt(reftableClusters, ref firstFree);
                long start = reftableOffset >> _cb;
                changed = await WriteRefblocksAsync(start, start + reftableClusters, rt, ct).ConfigureAwait(false);
            } while (changed);

            var raw = new byte[rt.Entries * 8];
            for (long i = 0; i < rt.Entries; i++)
                BinaryPrimitives.WriteUInt64BigEndian(raw.AsSpan((int)(i * 8)), rt.Table[i]);
            var hdr = new byte[12];
            BinaryPrimitives.WriteUInt64BigEndian(hdr, (ulong)reftableOffset);
            BinaryPrimitives.WriteUInt32BigEndian(hdr.AsSpan(8), (uint)reftableClusters);
            if (!await PreWriteOverlapCheckAsync(Meta.None, reftableOffset, raw.Length, ct).ConfigureAwait(false))
                throw Fail(EIO, $"ERROR writing reftable: {EIO}");
            try
            {
                await _file.WriteAsync(raw, reftableOffset, ct).ConfigureAwait(false);
                _wrote = true;
                // The blocks and the table must be durable before the header points at them.
                await _file.FlushAsync(ct).ConfigureAwait(false);
                await _file.WriteAsync(hdr, 48, ct).ConfigureAwait(false);
                await _file.FlushAsync(ct).ConfigureAwait(false);
            }
            catch (IOException e)
            {
                throw Fail(EIO, $"ERROR writing reftable: {e.Message}");
            }
            _h.RefcountTableOffset = reftableOffset;
            _h.RefcountTableClusters = (int)reftableClusters;
            _stored = NewStoredRefcounts(rt.Table);
            MetadataChanged();
        }

        /// <summary>
        /// check_oflag_copied: in the active L1 and L2 tables, COPIED must be set exactly when the refcount is 1.
        /// Repaired always with <see cref="Fix.Errors"/>, with <see cref="Fix.Leaks"/> only when the refcounts
        /// are known to be right.
        /// </summary>
        private async ValueTask CheckOflagCopiedAsync(Fix fix, CancellationToken ct)
        {
            bool repair = Fixes(fix, Fix.Errors) ||
                (Fixes(fix, Fix.Leaks) && _res.CheckErrors == 0 && _res.Corruptions == 0 && _res.Leaks == 0);
            _readBudget = WorkBudget;
            var l1 = _img.ActiveL1ForCheck;
            // Results of L2 tables already seen (hostile images may reference one table many times).
            var seen = new Dictionary<long, List<string>?>();
            for (int i = 0; i < l1.Length; i++)
            {
                ulong l1Entry = l1[i];
                long l2Offset = (long)(l1Entry & L1OffsetMask);
                if (l2Offset == 0)
                    continue;

                ulong? refcount = await _stored.GetAsync(l2Offset >> _cb, ct).ConfigureAwait(false);
                if (refcount is not ulong rc)
                    continue; // unreadable refcount: already reported by the comparison
                if ((rc == 1) != ((l1Entry & OflagCopied) != 0))
                {
                    _res.Corruptions++;
                    Log($"{(repair ? "Repairing" : "ERROR")} OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={l1Entry:x} refcount={rc}");
                    if (repair)
                    {
                        ulong fixedEntry = rc == 1 ? l1Entry | OflagCopied : l1Entry & ~OflagCopied;
                        var b = new byte[8];
                        BinaryPrimitives.WriteUInt64BigEndian(b, fixedEntry);
                        if (!await PreWriteOverlapCheckAsync(Meta.ActiveL1, _h.L1TableOffset + i * 8L, 8, ct).ConfigureAwait(false))
                        {
                            _res.CheckErrors++;
                            throw new CheckFailedException(EIO);
                        }
                        try
                        {
                            await _file.WriteAsync(b, _h.L1TableOffset + i * 8L, ct).ConfigureAwait(false);
                            await _file.FlushAsync(ct).ConfigureAwait(false);
                        }
                        catch (IOException)
                        {
                            _res.CheckErrors++;
                            throw new CheckFailedException(EIO);
                        }
                        l1[i] = fixedEntry;
                        _wrote = true;
                        _res.Corruptions--;
                        _res.CorruptionsFixed++;
                    }
                }

                if (seen.TryGetValue(l2Offset, out var earlier))
                {
                    // Read again, the table would give the same errors (none, once repaired).
                    if (earlier != null && !repair)
                    {
                        foreach (var line in earlier)
                            Log(line);
                        _res.Corruptions += earlier.Count;
                    }
                    continue;
                }

                byte[]? table;
                try
                {
                    table = await ReadTableAsync(l2Offset, _cs, ct).ConfigureAwait(false);
                }
                catch (IOException e)
                {
                    Log($"ERROR: Could not read L2 table: {e.Message}");
                    _res.CheckErrors++;
                    throw new CheckFailedException(EIO);
                }
                List<string>? errors = null;
                seen[l2Offset] = null;
                if (table == null)
                    continue;

                int dirty = 0;
                for (int j = 0; j < _l2Entries; j++)
                {
                    ulong e = BE64(table, j * _entrySize);
                    var type = TypeOf(e);
                    if (type is not (L2Type.Normal or L2Type.ZeroAlloc))
                        continue;
                    long dataCluster = (long)((e & L2OffsetMask) >> _cb);
                    ulong dataRc;
                    if (!_stored.TryGetRecent(dataCluster, out dataRc))
                    {
                        ulong? r = await _stored.GetAsync(dataCluster, ct).ConfigureAwait(false);
                        if (r is not ulong rr)
                            continue;
                        dataRc = rr;
                    }
                    if ((dataRc == 1) == ((e & OflagCopied) != 0))
                        continue;
                    _res.Corruptions++;
                    string line = $"{(repair ? "Repairing" : "ERROR")} OFLAG_COPIED data cluster: l2_entry={e:x} refcount={dataRc}";
                    Log(line);
                    (errors ??= []).Add(line);
                    if (repair)
                    {
                        BinaryPrimitives.WriteUInt64BigEndian(table.AsSpan(j * _entrySize), dataRc == 1 ? e | OflagCopied : e & ~OflagCopied);
                        dirty++;
                    }
                }
                seen[l2Offset] = errors;

                if (dirty > 0)
                {
                    if (!await PreWriteOverlapCheckAsync(Meta.ActiveL2, l2Offset, _cs, ct).ConfigureAwait(false))
                    {
                        Log($"ERROR: Could not write L2 table; metadata overlap check failed: {EIO}");
                        _res.CheckErrors++;
                        throw new CheckFailedException(EIO);
                    }
                    try
                    {
                        await _file.WriteAsync(table, l2Offset, ct).ConfigureAwait(false);
                    }
                    catch (IOException e)
                    {
                        Log($"ERROR: Could not write L2 table: {e.Message}");
                        _res.CheckErrors++;
                        throw new CheckFailedException(EIO);
                    }
                    _wrote = true;
                    _res.Corruptions -= dirty;
                    _res.CorruptionsFixed += dirty;
                }
            }
        }
    }
}
