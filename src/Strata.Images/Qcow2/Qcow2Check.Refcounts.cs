using System.Buffers.Binary;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

public static partial class Qcow2Check
{
    private sealed partial class Run
    {
        /// <summary>qcow2_check_refcounts.</summary>
        private async ValueTask CheckRefcountsAsync(Fix fix, CancellationToken ct)
        {
            _res = default;
            long size = _file.Length;
            _nb = (size + _cs - 1) >> _cb;
            if (_nb > int.MaxValue)
            {
                _res.CheckErrors++;
                throw new CheckFailedException(EFBIG);
            }
            _res.TotalClusters = (VirtualDiskSize + _cs - 1) >> _cb;
            _stored = NewStoredRefcounts(await RefcountTable.LoadTableAsync(_file, _h, ct).ConfigureAwait(false));
            _imrt.Clear();
            _rebuild = false;

            await CalculateRefcountsAsync(fix, ct).ConfigureAwait(false);

            // When nothing needs rebuilding but something is to be fixed, the comparison runs again with repairs.
            var preCompare = _res;
            long highest = await CompareRefcountsAsync(Fix.None, ct).ConfigureAwait(false);

            if (_rebuild && Fixes(fix, Fix.Errors))
            {
                var old = _res;
                long freshLeaks = 0;
                Log("Rebuilding refcount structure");
                await RebuildRefcountStructureAsync(ct).ConfigureAwait(false);
                _res.Corruptions = 0;
                _res.Leaks = 0;

                // The old table was exchanged for a new one: count the references again.
                _rebuild = false;
                _imrt.Clear();
                await CalculateRefcountsAsync(Fix.None, ct).ConfigureAwait(false);

                if (Fixes(fix, Fix.Leaks))
                {
                    // The old refcount structures are leaked now; fix that. Only leaks this could not fix count.
                    var saved = _res;
                    _res = default;
                    highest = await CompareRefcountsAsync(Fix.Leaks, ct).ConfigureAwait(false);
                    if (_rebuild)
                        Log("ERROR rebuilt refcount structure is still broken");
                    freshLeaks = _res.Leaks;
                    _res = saved;
                }

                if (_res.Corruptions < old.Corruptions)
                    _res.CorruptionsFixed += old.Corruptions - _res.Corruptions;
                if (_res.Leaks < old.Leaks)
                    _res.LeaksFixed += old.Leaks - _res.Leaks;
                _res.Leaks += freshLeaks;
            }
            else if (fix != Fix.None)
            {
                if (_rebuild)
                {
                    Log("ERROR need to rebuild refcount structures");
                    _res.CheckErrors++;
                    throw new CheckFailedException(EIO);
                }
                if (_res.Leaks != 0 || _res.Corruptions != 0)
                {
                    _res = preCompare;
                    highest = await CompareRefcountsAsync(fix, ct).ConfigureAwait(false);
                }
            }

            try
            {
                await CheckOflagCopiedAsync(fix, ct).ConfigureAwait(false);
            }
            finally
            {
                await FinishStoredRefcountsAsync(ct).ConfigureAwait(false);
            }
            _res.ImageEndOffset = (highest + 1) * _cs;
        }

        private StoredRefcounts NewStoredRefcounts(ulong[] table) =>
            new(_file, _cs, _order, table) { WriteBack = WriteRefblockAsync };

        /// <summary>calculate_refcounts: counts every reference to every cluster into the in-memory table.</summary>
        private async ValueTask CalculateRefcountsAsync(Fix fix, CancellationToken ct)
        {
            // Header.
            Inc(0, _cs, 1);

            // The active L1 table (with the allocation statistics), then every snapshot's.
            var tables = new List<(long Offset, uint Size, bool Active)> { (_h.L1TableOffset, (uint)_h.L1Size, true) };
            var valid = new List<bool>(_snapshots.Count);
            foreach (var sn in _snapshots)
            {
                bool ok = (sn.L1TableOffset & (ulong)(_cs - 1)) == 0 && sn.L1Size <= MaxL1SizeBytes / 8;
                valid.Add(ok);
                if (ok)
                    tables.Add(((long)sn.L1TableOffset, sn.L1Size, false));
            }
            await BeginTableWalkAsync(tables, ct).ConfigureAwait(false);

            await CheckL1Async(_h.L1TableOffset, (uint)_h.L1Size, fix, active: true, ct).ConfigureAwait(false);
            for (int i = 0; i < _snapshots.Count; i++)
            {
                var sn = _snapshots[i];
                if ((sn.L1TableOffset & (ulong)(_cs - 1)) != 0)
                {
                    Log($"ERROR snapshot {sn.Id} ({sn.Name}) l1_offset={AltHex(sn.L1TableOffset)}: L1 table is not cluster aligned; snapshot table entry corrupted");
                    _res.Corruptions++;
                    continue;
                }
                if (!valid[i])
                {
                    Log($"ERROR snapshot {sn.Id} ({sn.Name}) l1_size={AltHex(sn.L1Size)}: L1 table is too large; snapshot table entry corrupted");
                    _res.Corruptions++;
                    continue;
                }
                await CheckL1Async((long)sn.L1TableOffset, sn.L1Size, fix, active: false, ct).ConfigureAwait(false);
            }
            await EndTableWalkAsync(fix, ct).ConfigureAwait(false);

            Inc(_snapshotsOffset, _snapshotsSize, 1);

            // Refcount table.
            Inc(_h.RefcountTableOffset, _stored.Table.Length * 8L, 1);

            // Encryption header (LUKS).
            if (_h.CryptoExtension is { Length: >= 16 } crypto)
            {
                long off = (long)BinaryPrimitives.ReadUInt64BigEndian(crypto);
                long len = (long)BinaryPrimitives.ReadUInt64BigEndian(crypto.AsSpan(8));
                if (len != 0)
                    Inc(off, len, 1);
            }

            await CheckBitmapsAsync(ct).ConfigureAwait(false);
            await CheckRefblocksAsync(fix, ct).ConfigureAwait(false);
        }

        /// <summary>
        /// qcow2_inc_refcounts_imrt: one more reference (times <paramref name="mult"/>) to every cluster the byte
        /// range touches. A range reaching a whole cluster or more past the end of the file is a corruption and is
        /// not counted (this keeps the in-memory table within the file's size).
        /// </summary>
        private void Inc(long offset, long size, long mult)
        {
            if (size <= 0 || mult <= 0)
                return;
            long fileLen = _file.Length;
            if (offset < 0 || offset > fileLen + _cs || offset + size - fileLen >= _cs)
            {
                Log($"ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x{(ulong)offset:x} size 0x{(ulong)size:x}", mult);
                _res.Corruptions += mult;
                return;
            }
            long start = offset >> _cb, last = (offset + size - 1) >> _cb;
            for (long k = start; k <= last; k++)
            {
                if (k >= _nb)
                    _nb = k + 1;
                ulong rc = _imrt.Get(k);
                ulong room = _rcMax - rc;
                long add = (ulong)mult <= room ? mult : (long)room;
                if (add > 0)
                    _imrt.Set(k, rc + (ulong)add);
                long overflows = mult - add;
                if (overflows > 0)
                {
                    string a = $"ERROR: overflow cluster offset=0x{(ulong)(k << _cb):x}";
                    const string b = "Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing";
                    if (overflows == 1)
                    {
                        Log(a);
                        Log(b);
                    }
                    else
                    {
                        for (long m = 0; m < overflows && m < Qcow2CheckResult.MaxStoredMessages; m++)
                        {
                            Log(a);
                            Log(b);
                        }
                        if (overflows > Qcow2CheckResult.MaxStoredMessages)
                            LogPairs(a, b, overflows - Qcow2CheckResult.MaxStoredMessages);
                    }
                    _res.Corruptions += overflows;
                }
            }
        }

        private void Corrupt(long mult, string message)
        {
            Log(message, mult);
            _res.Corruptions += mult;
        }

        /// <summary>Two alternating lines, <paramref name="times"/> pairs (only reached with absurd repeat counts).</summary>
        private void LogPairs(string a, string b, long times)
        {
            if (!_log.HasCallback)
            {
                _log.Add(a, times); // only counted by now: order does not matter
                _log.Add(b, times);
                return;
            }
            for (long m = 0; m < times; m++)
            {
                Log(a);
                Log(b);
            }
        }

        /// <summary>check_refblocks: counts the refcount blocks, and checks their table entries.</summary>
        private async ValueTask CheckRefblocksAsync(Fix fix, CancellationToken ct)
        {
            var table = _stored.Table;
            for (long i = 0; i < table.Length; i++)
            {
                ulong e = table[i];
                ulong offset = e & RefTableOffsetMask;
                ulong cluster = offset >> _cb;
                if ((e & RefTableReservedMask) != 0)
                {
                    Log($"ERROR refcount table entry {i} has reserved bits set");
                    _res.Corruptions++;
                    _rebuild = true;
                    continue;
                }
                if ((offset & (ulong)(_cs - 1)) != 0)
                {
                    Log($"ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted");
                    _res.Corruptions++;
                    _rebuild = true;
                    continue;
                }
                if (cluster >= (ulong)_nb)
                {
                    _res.Corruptions++;
                    bool repair = Fixes(fix, Fix.Errors);
                    Log($"{(repair ? "Repairing" : "ERROR")} refcount block {i} is outside image");
                    if (repair)
                    {
                        string? error = await GrowFileForRefblockAsync(offset, ct).ConfigureAwait(false);
                        if (error == null)
                        {
                            _res.Corruptions--;
                            _res.CorruptionsFixed++;
                            Inc((long)offset, _cs, 1);
                            continue;
                        }
                        _rebuild = true;
                        Log($"ERROR could not resize image: {error}");
                    }
                    continue;
                }
                if (offset != 0)
                {
                    Inc((long)offset, _cs, 1);
                    ulong rc = _imrt.Get((long)cluster);
                    if (rc != 1)
                    {
                        Log($"ERROR refcount block {i} refcount={rc}");
                        _res.Corruptions++;
                        _rebuild = true;
                    }
                }
            }
        }

        /// <summary>Extends the file so that a refcount block lying past its end is inside it; null on success, else the error.</summary>
        private async ValueTask<string?> GrowFileForRefblockAsync(ulong offset, CancellationToken ct)
        {
            if (offset > (ulong)(long.MaxValue - _cs))
                return EINVAL;
            long newLength = (long)offset + _cs;
            if ((newLength + _cs - 1) >> _cb > int.MaxValue)
                return EFBIG;
            try
            {
                if (newLength > _file.Length)
                    await _file.SetLengthAsync(newLength, ct: ct).ConfigureAwait(false);
            }
            catch (IOException e)
            {
                return e.Message;
            }
            _wrote = true;
            long nb = (_file.Length + _cs - 1) >> _cb;
            if (nb > _nb)
                _nb = nb;
            return (long)(offset >> _cb) < _nb ? null : EINVAL;
        }
    }
}
