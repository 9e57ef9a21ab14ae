using System.Buffers.Binary;
using System.Text;
using Strata.Images.Storage;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

/// <summary>What the caller records in a new snapshot (qemu-img sets only the name and the date).</summary>
public sealed record Qcow2SnapshotCreateInfo
{
    public string Name { get; init; } = "";

    /// <summary>Wall clock time of the snapshot; null = now, with microsecond precision as QEMU's g_get_real_time.</summary>
    public DateTimeOffset? Date { get; init; }

    public ulong VmClockNanoseconds { get; init; }

    /// <summary>Record/replay instruction count; qemu-img stores 0.</summary>
    public ulong Icount { get; init; }
}

/// <summary>
/// Internal snapshots (QEMU's block/qcow2-snapshot.c): list, create, delete, apply, and a read-only view of a
/// snapshot. Refcounts and COPIED flags follow qcow2_update_snapshot_refcount. A crash at any point leaves either the
/// old or the new snapshot table and, at worst, leaked clusters: flushes order what power loss needs (refcounts
/// before the header that makes references visible, references gone before refcounts drop), and each operation's
/// refcount and COPIED-flag changes are written together (see <see cref="WriteStagedMetadataAsync"/>).
/// </summary>
public sealed partial class Qcow2Image
{
    private const int MaxIdBytes = 127;    // QEMUSnapshotInfo.id_str is char[128]
    private const int MaxNameBytes = 255;  // QEMUSnapshotInfo.name is char[256]

    private List<Qcow2Snapshot>? _snapshots;
    private long _snapshotsSize;
    private readonly List<long> _freedBySnapshotOp = [];

    /// <summary>The snapshot table as stored (read at the first use).</summary>
    public async ValueTask<IReadOnlyList<Qcow2Snapshot>> GetSnapshotsAsync(CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        await _lock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            return [.. await LoadSnapshotsLockedAsync(ct).ConfigureAwait(false)];
        }
        finally
        {
            Unlock();
        }
    }

    /// <summary>The snapshot table as last read or written, without waiting; null before the first use.</summary>
    public IReadOnlyList<Qcow2Snapshot>? LoadedSnapshots => _snapshots;

    private async ValueTask<List<Qcow2Snapshot>> LoadSnapshotsLockedAsync(CancellationToken ct)
    {
        if (_snapshots != null)
            return _snapshots;
        var r = await SnapshotTable.ReadAsync(_file, _h.SnapshotsOffset, _h.SnapshotCount, Size, ct: ct).ConfigureAwait(false);
        _snapshotsSize = r.Size;
        return _snapshots = r.Snapshots;
    }

    /// <summary>QEMU's find_snapshot_by_id_and_name: both given = both must match; else by the one given. -1 when none.</summary>
    public static int FindSnapshot(IReadOnlyList<Qcow2Snapshot> snapshots, string? id, string? name)
    {
        ArgumentNullException.ThrowIfNull(snapshots);
        for (int i = 0; i < snapshots.Count; i++)
        {
            var sn = snapshots[i];
            if (id != null && name != null ? sn.Id == id && sn.Name == name
                : id != null ? sn.Id == id
                : name != null && sn.Name == name)
                return i;
        }
        return -1;
    }

    /// <summary>QEMU's find_snapshot_by_id_or_name (what snapshot -a uses): an ID match wins over a name match.</summary>
    public static int FindSnapshotByIdOrName(IReadOnlyList<Qcow2Snapshot> snapshots, string idOrName)
    {
        int i = FindSnapshot(snapshots, idOrName, null);
        return i >= 0 ? i : FindSnapshot(snapshots, null, idOrName);
    }

    /// <summary>
    /// qcow2_snapshot_create: ID = highest numeric ID + 1, the current L1 copied to new clusters, every L2 table and
    /// data cluster it references gains a reference (COPIED flags cleared), and once that and the new table are
    /// durable the header is switched to it with one write. Returns the new entry.
    /// </summary>
    public async ValueTask<Qcow2Snapshot> CreateSnapshotAsync(Qcow2SnapshotCreateInfo info, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(info);
        ObjectDisposedException.ThrowIf(_disposed, this);
        CheckWritable();
        await LockAllAsync(ct).ConfigureAwait(false);
        try
        {
            var list = await LoadSnapshotsLockedAsync(ct).ConfigureAwait(false);
            if (list.Count >= MaxSnapshots)
                throw new SnapshotException(SnapshotException.EFBIG);
            await FlushIfDirtyLockedAsync(ct).ConfigureAwait(false);
            await CheckReferencesFitAsync(_l1, ct).ConfigureAwait(false);

            var date = info.Date ?? DateTimeOffset.UtcNow;
            long micros = (date.UtcTicks - DateTimeOffset.UnixEpoch.UtcTicks) / 10;
            var sn = new Qcow2Snapshot
            {
                IdBytes = Truncate(Encoding.ASCII.GetBytes(NewSnapshotId(list)), MaxIdBytes),
                NameBytes = Truncate(Encoding.UTF8.GetBytes(info.Name), MaxNameBytes),
                DateSeconds = (uint)(micros / 1_000_000),
                DateNanoseconds = (uint)(micros % 1_000_000 * 1000),
                VmClockNanoseconds = info.VmClockNanoseconds,
                Icount = info.Icount,
                DiskSize = (ulong)Size,
                L1Size = (uint)_l1.Length,
            };

            // The copy of the L1 table, as it is now (COPIED flags included, as QEMU writes it).
            long l1Bytes = _l1.Length * 8L;
            if (l1Bytes > 0)
            {
                long off = await _rc.AllocateClustersAsync((l1Bytes + _cs - 1) >> _cb, ct).ConfigureAwait(false);
                sn.L1TableOffset = (ulong)off;
                await _file.WriteAsync(SerializeL1(_l1, _l1.Length), off, ct).ConfigureAwait(false);
            }

            // +1 for everything the active L1 references and the COPIED flags cleared, staged in the caches and
            // written together; durable before the header makes the snapshot visible.
            await UpdateSnapshotRefcountAsync(_l1, 1, activeL1: true, ct).ConfigureAwait(false);
            await WriteStagedMetadataAsync(refcountsFirst: true, ct).ConfigureAwait(false);
            // Then the new table, in QEMU's order (qcow2_write_snapshots after the +1 pass): a failure above leaves
            // the file as QEMU's, and the table stays out of the window where refcounts and COPIED flags disagree.
            var staged = await StageSnapshotTableAsync(new List<Qcow2Snapshot>(list) { sn }, ct).ConfigureAwait(false);
            await _rc.WriteDirtyAsync(ct).ConfigureAwait(false);
            await SwitchSnapshotTableAsync(staged, ct).ConfigureAwait(false);
            if (l1Bytes > 0)
                _metadata.Add((long)sn.L1TableOffset, l1Bytes, MetadataKind.InactiveL1);
            await _rc.WriteDirtyAsync(ct).ConfigureAwait(false);
            await _file.FlushAsync(ct).ConfigureAwait(false);
            await DiscardFreedClustersAsync(ct).ConfigureAwait(false);
            return sn;
        }
        finally
        {
            Unlock();
        }
    }

    /// <summary>
    /// qcow2_snapshot_delete (by ID and/or name, as find_snapshot_by_id_and_name). The entry leaves the table first
    /// (durably); then the references are dropped and the COPIED flags of what the active image now owns alone are set,
    /// written together.
    /// </summary>
    public async ValueTask<Qcow2Snapshot> DeleteSnapshotAsync(string? id, string? name, CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        CheckWritable();
        await LockAllAsync(ct).ConfigureAwait(false);
        try
        {
            var list = await LoadSnapshotsLockedAsync(ct).ConfigureAwait(false);
            int index = FindSnapshot(list, id, name);
            if (index < 0)
                throw new SnapshotException(SnapshotException.ENOENT, detail: "Can't find the snapshot");
            var sn = list[index];
            ValidateSnapshotL1(sn, asReport: false);
            var snL1 = await ReadSnapshotL1Async(sn, sn.L1Size, ct).ConfigureAwait(false);
            await FlushIfDirtyLockedAsync(ct).ConfigureAwait(false);

            var newList = new List<Qcow2Snapshot>(list);
            newList.RemoveAt(index);
            try
            {
                await WriteSnapshotTableAsync(newList, ct).ConfigureAwait(false);
            }
            catch (IOException e)
            {
                throw new SnapshotException(e.Message, detail: $"Failed to remove snapshot from snapshot list: {e.Message}");
            }
            if (sn.L1Size > 0)
                _metadata.Remove((long)sn.L1TableOffset, MetadataKind.InactiveL1);

            await UpdateSnapshotRefcountAsync(snL1, -1, activeL1: false, ct).ConfigureAwait(false);
            if (sn.L1Size > 0)
                await DropReferenceAsync((long)sn.L1TableOffset, sn.L1Size * 8L, ct).ConfigureAwait(false);
            await UpdateSnapshotRefcountAsync(_l1, 0, activeL1: true, ct).ConfigureAwait(false);
            await WriteStagedMetadataAsync(refcountsFirst: false, ct).ConfigureAwait(false);
            await DiscardFreedClustersAsync(ct).ConfigureAwait(false);
            return sn;
        }
        finally
        {
            Unlock();
        }
    }

    /// <summary>
    /// qcow2_snapshot_goto: the disk takes the snapshot's size, the active L1 becomes a copy of the snapshot's (its
    /// references counted first), then the old active tables lose their references.
    /// </summary>
    public async ValueTask<Qcow2Snapshot> ApplySnapshotAsync(string idOrName, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(idOrName);
        ObjectDisposedException.ThrowIf(_disposed, this);
        CheckWritable();
        // bdrv_snapshot_goto refuses any dirty bitmap (enabled or not) before it even looks the snapshot up.
        if (_bitmaps.All.Count > 0)
            throw new SnapshotException(SnapshotException.EBUSY, detail: "Device has active dirty bitmaps");
        Qcow2Snapshot sn;
        await _lock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            var list = await LoadSnapshotsLockedAsync(ct).ConfigureAwait(false);
            int index = FindSnapshotByIdOrName(list, idOrName);
            if (index < 0)
                throw new SnapshotException(SnapshotException.ENOENT, detail: "Can't find the snapshot");
            sn = list[index];
            ValidateSnapshotL1(sn, asReport: true);
            // Before anything changes (the size below): a refused apply must leave the image as it was.
            await CheckReferencesFitAsync(await ReadSnapshotL1Async(sn, sn.L1Size, ct).ConfigureAwait(false), ct).ConfigureAwait(false);
        }
        finally
        {
            Unlock();
        }
        if (sn.DiskSize != (ulong)Size)
        {
            try
            {
                await ResizeAsync((long)sn.DiskSize, allowShrink: true, ct: ct).ConfigureAwait(false);
            }
            catch (ImageException e) when (e is not SnapshotException)
            {
                throw new SnapshotException(SnapshotException.ENOTSUP, report: StripFileName(e.Message));
            }
        }

        await LockAllAsync(ct).ConfigureAwait(false);
        try
        {
            await FlushIfDirtyLockedAsync(ct).ConfigureAwait(false);
            if (sn.L1Size > _l1.Length)
                await GrowL1LockedAsync((int)sn.L1Size, ct).ConfigureAwait(false);
            var snL1 = await ReadSnapshotL1Async(sn, _l1.Length, ct).ConfigureAwait(false);
            await CheckReferencesFitAsync(snL1, ct).ConfigureAwait(false);

            // 1. The snapshot's clusters gain the active image's reference (QEMU also rewrites the snapshot's L1 flags),
            //    all durable before the active L1 points at them.
            var snL1Flags = (ulong[])snL1.Clone();
            bool snL1Changed = await UpdateSnapshotRefcountAsync(snL1Flags, 1, activeL1: false, ct).ConfigureAwait(false);
            if (snL1Changed && sn.L1Size > 0)
                await _file.WriteAsync(SerializeL1(snL1Flags, (int)sn.L1Size), (long)sn.L1TableOffset, ct).ConfigureAwait(false);
            await WriteStagedMetadataAsync(refcountsFirst: true, ct).ConfigureAwait(false);

            // 2. The active L1 is overwritten in place. Everything it now references is shared with the snapshot, so
            //    no entry may carry COPIED (QEMU's final flag pass comes to the same; writing it so at once keeps
            //    every intermediate state consistent).
            var newL1 = new ulong[_l1.Length];
            for (int i = 0; i < newL1.Length; i++)
                newL1[i] = snL1[i] & ~OflagCopied;
            await _file.WriteAsync(SerializeL1(newL1, newL1.Length), _h.L1TableOffset, ct).ConfigureAwait(false);
            await _file.FlushAsync(ct).ConfigureAwait(false);

            // 3. The old active tables lose their reference: nothing on disk points at them since the flush above.
            var oldL1 = _l1;
            _l1 = newL1;
            _dirtyL1.Clear();
            foreach (var e in oldL1)
                if ((e & L1OffsetMask) != 0)
                    _metadata.Remove((long)(e & L1OffsetMask), MetadataKind.ActiveL2);
            await UpdateSnapshotRefcountAsync(oldL1, -1, activeL1: false, ct).ConfigureAwait(false);
            await UpdateSnapshotRefcountAsync(_l1, 0, activeL1: true, ct).ConfigureAwait(false);
            foreach (var e in _l1)
                if ((e & L1OffsetMask) != 0)
                    _metadata.Add((long)(e & L1OffsetMask), _cs, MetadataKind.ActiveL2);
            await WriteStagedMetadataAsync(refcountsFirst: false, ct).ConfigureAwait(false);
            await DiscardFreedClustersAsync(ct).ConfigureAwait(false);
            return sn;
        }
        finally
        {
            Unlock();
        }
    }

    /// <summary>
    /// A read-only view of a snapshot's content (QEMU's qcow2_snapshot_load_tmp: the snapshot's L1 table in place of
    /// the active one; the disk keeps the image's current size). Dispose it before the image.
    /// </summary>
    public async ValueTask<Qcow2Image> OpenSnapshotAsync(string? id, string? name, CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Qcow2Snapshot sn;
        await _lock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            var list = await LoadSnapshotsLockedAsync(ct).ConfigureAwait(false);
            int index = FindSnapshot(list, id, name);
            if (index < 0)
                throw new SnapshotException(SnapshotException.ENOENT, detail: "Can't find snapshot");
            sn = list[index];
            ValidateSnapshotL1(sn, asReport: false);
            if (!_readOnly)
                await FlushMetadataLockedAsync(ct).ConfigureAwait(false);
        }
        finally
        {
            Unlock();
        }
        var view = await OpenAsync(_file, new Qcow2OpenOptions { ReadOnly = true, OwnsStorage = false, OwnsBacking = false }, ct).ConfigureAwait(false);
        try
        {
            view._l1 = await view.ReadSnapshotL1Async(sn, (int)sn.L1Size, ct).ConfigureAwait(false);
            view._backing = _backing;
        }
        catch
        {
            await view.DisposeAsync().ConfigureAwait(false);
            throw;
        }
        return view;
    }

    // ---- helpers ------------------------------------------------------------------------------------------

    /// <summary>Makes cached metadata durable before a snapshot operation (nothing to do when none is dirty).</summary>
    private async ValueTask FlushIfDirtyLockedAsync(CancellationToken ct)
    {
        if (_rc.IsDirty || _l2Cache.HasDirty || _dirtyL1.Count > 0 || _rc.HasPendingFrees)
            await FlushMetadataLockedAsync(ct).ConfigureAwait(false);
    }

    private async ValueTask LockAllAsync(CancellationToken ct)
    {
        await LockRangeAsync(0, long.MaxValue / 2, ct).ConfigureAwait(false);
        // Lock-free reads and writes that mapped clusters before the lock was taken must finish: clusters may be freed.
        await WaitHostIoDrainedAsync().ConfigureAwait(false);
    }

    private static byte[] Truncate(byte[] b, int max) => b.Length <= max ? b : b[..max];

    private static string StripFileName(string m)
    {
        int i = m.LastIndexOf(" ('", StringComparison.Ordinal);
        return i > 0 && m.EndsWith("')", StringComparison.Ordinal) ? m[..i] : m;
    }

    /// <summary>find_new_snapshot_id: strtoul of every ID (0 for non-numeric ones), the highest plus one.</summary>
    internal static string NewSnapshotId(IEnumerable<Qcow2Snapshot> snapshots)
    {
        ulong max = 0;
        foreach (var sn in snapshots)
            max = Math.Max(max, StrToUl(sn.Id));
        return (max + 1).ToString(System.Globalization.CultureInfo.InvariantCulture);
    }

    /// <summary>C's strtoul(s, NULL, 10) on a 64-bit system: leading space, a sign, digits; saturates; "-n" wraps.</summary>
    internal static ulong StrToUl(string s)
    {
        int i = 0;
        while (i < s.Length && (s[i] == ' ' || (s[i] >= '\t' && s[i] <= '\r')))
            i++;
        bool neg = false;
        if (i < s.Length && (s[i] == '+' || s[i] == '-'))
            neg = s[i++] == '-';
        ulong v = 0;
        bool overflow = false;
        while (i < s.Length && s[i] >= '0' && s[i] <= '9')
        {
            ulong d = (ulong)(s[i++] - '0');
            if (v > (ulong.MaxValue - d) / 10)
                overflow = true;
            else
                v = v * 10 + d;
        }
        if (overflow)
            return ulong.MaxValue;
        return neg ? unchecked(0 - v) : v;
    }

    /// <summary>qcow2_validate_table for a snapshot's L1 table, plus: it must lie inside the file.</summary>
    private void ValidateSnapshotL1(Qcow2Snapshot sn, bool asReport)
    {
        string? error = null;
        if (sn.L1Size > MaxL1SizeBytes / 8)
            error = "Snapshot L1 table too large";
        else if (long.MaxValue - sn.L1Size * 8L < (long)Math.Min(sn.L1TableOffset, (ulong)long.MaxValue) || sn.L1TableOffset > long.MaxValue)
            error = "Snapshot L1 table exceeds the maximum possible image size";
        else if ((sn.L1TableOffset & (ulong)(_cs - 1)) != 0)
            error = "Snapshot L1 table offset invalid";
        else if (sn.L1Size > 0 && (long)sn.L1TableOffset + sn.L1Size * 8L > _file.Length)
            error = "Snapshot L1 table lies past the end of the image file";
        if (error == null)
            return;
        string errno = sn.L1Size > MaxL1SizeBytes / 8 ? SnapshotException.EFBIG : SnapshotException.EINVAL;
        throw asReport ? new SnapshotException(errno, report: error) : new SnapshotException(errno, detail: error);
    }

    /// <summary>The snapshot's L1 table, zero-padded to <paramref name="entries"/>.</summary>
    private async ValueTask<ulong[]> ReadSnapshotL1Async(Qcow2Snapshot sn, long entries, CancellationToken ct)
    {
        var l1 = new ulong[Math.Max(entries, sn.L1Size)];
        if (sn.L1Size == 0)
            return l1;
        var raw = new byte[sn.L1Size * 8L];
        await _file.ReadAsync(raw, (long)sn.L1TableOffset, ct).ConfigureAwait(false);
        for (int i = 0; i < sn.L1Size; i++)
            l1[i] = BinaryPrimitives.ReadUInt64BigEndian(raw.AsSpan(i * 8));
        return l1;
    }

    private static byte[] SerializeL1(ulong[] l1, int entries)
    {
        var raw = new byte[entries * 8L];
        for (int i = 0; i < entries; i++)
            BinaryPrimitives.WriteUInt64BigEndian(raw.AsSpan(i * 8), l1[i]);
        return raw;
    }

    /// <summary>Adds <paramref name="addend"/> to clusters [first, first+count), allocating refcount blocks as needed.</summary>
    private async ValueTask AddRefsAsync(long first, long count, int addend, CancellationToken ct)
    {
        if (addend > 0)
        {
            while (!await _rc.UpdateAsync(first, count, addend, ct).ConfigureAwait(false)) { }
            return;
        }
        await DropReferenceAsync(first << _cb, count << _cb, ct).ConfigureAwait(false);
    }

    /// <summary>Drops one reference to the clusters covering [offset, offset+bytes); clusters left unreferenced leave the caches.</summary>
    private async ValueTask DropReferenceAsync(long offset, long bytes, CancellationToken ct)
    {
        long first = offset >> _cb, last = (offset + bytes - 1) >> _cb;
        await _rc.UpdateAsync(first, last - first + 1, -1, ct).ConfigureAwait(false);
        for (long c = first; c <= last; c++)
            if (await _rc.GetRefcountAsync(c, ct).ConfigureAwait(false) == 0)
            {
                OnClusterFreed(c << _cb);
                _freedBySnapshotOp.Add(c);
            }
    }

    /// <summary>
    /// QEMU passes discards of clusters freed by snapshot operations down to the file (pass-discard-snapshot is on by
    /// default). Called once nothing on disk references them any more.
    /// </summary>
    private async ValueTask DiscardFreedClustersAsync(CancellationToken ct)
    {
        _freedBySnapshotOp.Sort();
        int i = 0;
        while (i < _freedBySnapshotOp.Count)
        {
            long first = _freedBySnapshotOp[i], n = 1;
            while (i + n < _freedBySnapshotOp.Count && _freedBySnapshotOp[(int)(i + n)] == first + n)
                n++;
            i += (int)n;
            // A cluster may have been taken again by an allocation in the same operation.
            long start = first, end = first + n;
            for (long c = first; c <= end; c++)
            {
                if (c < end && await _rc.GetRefcountAsync(c, ct).ConfigureAwait(false) == 0)
                    continue;
                if (c > start && (start << _cb) < _file.Length)
                    await _file.DiscardAsync(start << _cb, Math.Min((c - start) << _cb, _file.Length - (start << _cb)), ct).ConfigureAwait(false);
                start = c + 1;
            }
        }
        _freedBySnapshotOp.Clear();
    }

    /// <summary>
    /// qcow2_update_snapshot_refcount over an L1 table in memory: adds <paramref name="addend"/> to every L2 table and
    /// cluster it references and sets COPIED exactly where the refcount is then 1 (in the L2 tables, through the cache,
    /// and in <paramref name="l1"/>). For the active L1 changed entries are marked for writing. Returns whether
    /// <paramref name="l1"/> changed.
    /// </summary>
    private async ValueTask<bool> UpdateSnapshotRefcountAsync(ulong[] l1, int addend, bool activeL1, CancellationToken ct)
    {
        bool changed = false;
        int entries = 1 << _l2Bits;
        for (int i = 0; i < l1.Length; i++)
        {
            ulong l1e = l1[i];
            long l2 = (long)(l1e & L1OffsetMask);
            if (l2 == 0)
                continue;
            if ((l2 & (_cs - 1)) != 0)
                throw await SignalCorruptionAsync($"L2 table offset 0x{l2:x} unaligned (L1 index: 0x{i:x})").ConfigureAwait(false);
            if (_l2Cache.TryGet(l2) == null && l2 >= _file.Length)
                throw await SignalCorruptionAsync($"L2 table offset 0x{l2:x} lies past the end of the image file (L1 index: 0x{i:x})").ConfigureAwait(false);
            var t = await _l2Cache.GetAsync(l2, ct).ConfigureAwait(false);
            for (int j = 0; j < entries; j++)
            {
                ulong e = GetL2Entry(t, j);
                ulong rc;
                switch (TypeOf(e))
                {
                    case ClusterType.Compressed:
                        if (addend != 0)
                        {
                            var (off, bytes) = ParseCompressed(e);
                            long first = off >> _cb;
                            await AddRefsAsync(first, ((off + bytes - 1) >> _cb) - first + 1, addend, ct).ConfigureAwait(false);
                        }
                        rc = 2; // compressed clusters are never written in place
                        break;
                    case ClusterType.Normal:
                    case ClusterType.ZeroAlloc:
                        long host = (long)(e & L2OffsetMask);
                        if ((host & (_cs - 1)) != 0)
                            throw await SignalCorruptionAsync($"Cluster allocation offset 0x{host:x} unaligned (L2 offset: 0x{l2:x}, L2 index: 0x{j:x})").ConfigureAwait(false);
                        rc = await UpdateClusterRefcountAsync(host >> _cb, addend, ct).ConfigureAwait(false);
                        break;
                    default:
                        rc = 0;
                        break;
                }
                ulong ne = rc == 1 ? e | OflagCopied : e & ~OflagCopied;
                if (ne != e)
                {
                    // The table may have left the cache when a cluster it referenced was freed: fetch it again.
                    if (!ReferenceEquals(_l2Cache.TryGet(l2), t))
                        t = await _l2Cache.GetAsync(l2, ct).ConfigureAwait(false);
                    SetL2(t, j, ne, GetL2Bitmap(t, j));
                }
            }
            if (addend != 0)
                await AddRefsAsync(l2 >> _cb, 1, addend, ct).ConfigureAwait(false);
            ulong l2rc = await _rc.GetRefcountAsync(l2 >> _cb, ct).ConfigureAwait(false);
            ulong nl1 = (ulong)l2 | (l2rc == 1 ? OflagCopied : 0);
            if (nl1 != l1e)
            {
                l1[i] = nl1;
                changed = true;
                if (activeL1)
                    _dirtyL1.Add(i);
            }
        }
        return changed;
    }

    /// <summary>
    /// Adds <paramref name="addend"/> (may be 0) to one data cluster's refcount and returns the new refcount. The
    /// common case, a cached refcount block, takes no async step: this runs once per L2 entry of the image.
    /// </summary>
    private ValueTask<ulong> UpdateClusterRefcountAsync(long cluster, int addend, CancellationToken ct)
    {
        if (addend == 0 ? _rc.TryGetCachedRefcount(cluster, out ulong rc) : _rc.TryUpdateCached(cluster, addend, out rc))
        {
            if (addend < 0 && rc == 0)
            {
                OnClusterFreed(cluster << _cb);
                _freedBySnapshotOp.Add(cluster);
            }
            return ValueTask.FromResult(rc);
        }
        // Not a local function: its closure would be allocated on every call, fast path included.
        return UpdateClusterRefcountSlowAsync(cluster, addend, ct);
    }

    private async ValueTask<ulong> UpdateClusterRefcountSlowAsync(long cluster, int addend, CancellationToken ct)
    {
        if (addend != 0)
            await AddRefsAsync(cluster, 1, addend, ct).ConfigureAwait(false);
        return await _rc.GetRefcountAsync(cluster, ct).ConfigureAwait(false);
    }

    /// <summary>
    /// Refuses, before anything changes, a reference more to everything <paramref name="l1"/> references when a
    /// refcount would overflow (QEMU fails with EINVAL half-way through; narrow refcounts make this reachable).
    /// </summary>
    private async ValueTask CheckReferencesFitAsync(ulong[] l1, CancellationToken ct)
    {
        if (_h.RefcountOrder == 6)
            return;
        // A bitmap over the file tells a cluster met for the first time (one refcount look-up, no I/O when its block
        // is cached); only clusters met again (shared compressed clusters, broken images) go to a dictionary.
        long fileClusters = (_file.Length + _cs - 1) >> _cb;
        var seen = fileClusters <= MaxSeenBitmapBits ? new ulong[(fileClusters + 63) >> 6] : null;
        var seenElsewhere = new HashSet<long>();
        var again = new Dictionary<long, ulong>();
        int entries = 1 << _l2Bits;

        bool FirstTime(long c)
        {
            if (seen != null && (ulong)c < (ulong)fileClusters)
            {
                ulong bit = 1UL << (int)(c & 63);
                if ((seen[c >> 6] & bit) != 0)
                    return false;
                seen[c >> 6] |= bit;
                return true;
            }
            return seenElsewhere.Add(c);
        }

        ValueTask CountAsync(long c)
        {
            if (!FirstTime(c))
                again[c] = again.GetValueOrDefault(c) + 1;
            else if (!_rc.TryGetCachedRefcount(c, out ulong rc))
                return CheckUncachedAsync(c);
            else if (rc + 1 > _rc.MaxRefcount)
                throw TooManyReferences(c);
            return ValueTask.CompletedTask;
        }

        async ValueTask CheckUncachedAsync(long c)
        {
            if (await _rc.GetRefcountAsync(c, ct).ConfigureAwait(false) + 1 > _rc.MaxRefcount)
                throw TooManyReferences(c);
        }

        for (int i = 0; i < l1.Length; i++)
        {
            long l2 = (long)(l1[i] & L1OffsetMask);
            if (l2 == 0 || (l2 & (_cs - 1)) != 0 || (_l2Cache.TryGet(l2) == null && l2 >= _file.Length))
                continue; // reported by the update itself
            await CountAsync(l2 >> _cb).ConfigureAwait(false);
            var t = await _l2Cache.GetAsync(l2, ct).ConfigureAwait(false);
            for (int j = 0; j < entries; j++)
            {
                ulong e = GetL2Entry(t, j);
                switch (TypeOf(e))
                {
                    case ClusterType.Compressed:
                        var (off, bytes) = ParseCompressed(e);
                        for (long c = off >> _cb; c <= (off + bytes - 1) >> _cb; c++)
                            await CountAsync(c).ConfigureAwait(false);
                        break;
                    case ClusterType.Normal:
                    case ClusterType.ZeroAlloc:
                        await CountAsync((long)(e & L2OffsetMask) >> _cb).ConfigureAwait(false);
                        break;
                }
            }
        }
        foreach (var (c, n) in again)
            if (await _rc.GetRefcountAsync(c, ct).ConfigureAwait(false) + 1 + n > _rc.MaxRefcount)
                throw TooManyReferences(c);
    }

    /// <summary>The largest file (in clusters) whose clusters <see cref="CheckReferencesFitAsync"/> marks in a bitmap (16 MiB).</summary>
    private const long MaxSeenBitmapBits = 1L << 27;

    private SnapshotException TooManyReferences(long cluster) =>
        new(SnapshotException.EINVAL, detail: $"Refcount of cluster {cluster} would exceed the {_h.RefcountBits}-bit maximum");

    /// <summary>
    /// Writes every staged refcount block, L2 table and L1 entry of a snapshot operation back to back, with no flush
    /// between them, then flushes. A refcount that changed while its COPIED flag has not yet (or the reverse) is what
    /// qemu-img check calls an OFLAG_COPIED corruption, and no order of per-cluster writes avoids such states; written
    /// together, a kill finds one only in the few microseconds the writes take. Within them, increments go out before
    /// the tables and decrements after, so that a kill there leaves refcounts too high (leaks, repaired by
    /// <c>check -r leaks</c>, as QEMU leaves them), never too low. What power loss needs is the flushes the callers
    /// put around this: refcounts durable before a table or header makes references visible, references gone from
    /// the disk before dropped refcounts free a cluster.
    /// </summary>
    private async ValueTask WriteStagedMetadataAsync(bool refcountsFirst, CancellationToken ct)
    {
        // Rare (the operation allocated past what the refcount blocks cover): the new blocks must be durable before
        // the refcount table points at them, which takes a flush of its own.
        if (_rc.HasDirtyTableEntries)
            await _rc.WriteDirtyAsync(ct).ConfigureAwait(false);
        var refcounts = new List<CachedTable>();
        var l2 = new List<CachedTable>();
        _rc.Blocks.CollectDirty(refcounts);
        _l2Cache.CollectDirty(l2);
        // Each write with what QEMU's cache flush reports to a blkdebug file for it.
        var writes = new List<(ReadOnlyMemory<byte> Data, long Offset, DebugEvent? Event)>();
        if (refcountsFirst)
            AddTables(refcounts, _rc.Blocks.UpdateEvent);
        AddTables(l2, _l2Cache.UpdateEvent);
        foreach (var (data, offset) in DirtyL1Runs())
            writes.Add((data, offset, null));
        if (!refcountsFirst)
            AddTables(refcounts, _rc.Blocks.UpdateEvent);

        if (_file is FileStorage fs)
            await fs.WriteManyAsync(writes.ConvertAll(w => (w.Data, w.Offset)), ct).ConfigureAwait(false);
        else
        {
            foreach (var (data, offset, e) in writes)
            {
                if (e is { } ev)
                    _file.Event(ev);
                await _file.WriteAsync(data, offset, ct).ConfigureAwait(false);
            }
        }
        foreach (var t in refcounts)
            t.Dirty = false;
        foreach (var t in l2)
            t.Dirty = false;
        _dirtyL1.Clear();
        await _file.FlushAsync(ct).ConfigureAwait(false);

        void AddTables(List<CachedTable> tables, DebugEvent? update)
        {
            tables.Sort((x, y) => x.Offset.CompareTo(y.Offset));
            foreach (var t in tables)
                writes.Add((t.Data, t.Offset, update));
        }
    }

    /// <summary>
    /// qcow2_write_snapshots: the whole table goes to newly allocated clusters, the header's count and offset are
    /// switched with one write once it is durable, and the old table is freed.
    /// </summary>
    private async ValueTask WriteSnapshotTableAsync(List<Qcow2Snapshot> list, CancellationToken ct)
    {
        var table = await StageSnapshotTableAsync(list, ct).ConfigureAwait(false);
        await _rc.WriteDirtyAsync(ct).ConfigureAwait(false);
        await SwitchSnapshotTableAsync(table, ct).ConfigureAwait(false);
    }

    /// <summary>A snapshot table written to the file but not yet in the header.</summary>
    private readonly record struct StagedSnapshotTable(List<Qcow2Snapshot> List, long Offset, int Length);

    /// <summary>
    /// Allocates clusters for the serialized table and writes it there. Nothing points at them yet; their refcounts
    /// stay in the cache for the caller to write before <see cref="SwitchSnapshotTableAsync"/>.
    /// </summary>
    private async ValueTask<StagedSnapshotTable> StageSnapshotTableAsync(List<Qcow2Snapshot> list, CancellationToken ct)
    {
        var table = SnapshotTable.Serialize(list);
        long offset = 0;
        if (table.Length > 0)
        {
            offset = await _rc.AllocateClustersAsync((table.Length + _cs - 1) >> _cb, ct).ConfigureAwait(false);
            if (_metadata.Overlap(offset >> _cb, (table.Length + _cs - 1) >> _cb) is { } used)
                throw await SignalCorruptionAsync($"Preventing invalid write on metadata (overlaps with {used})").ConfigureAwait(false);
            await _file.WriteAsync(table, offset, ct).ConfigureAwait(false);
        }
        return new StagedSnapshotTable(list, offset, table.Length);
    }

    /// <summary>
    /// Once the staged table and every refcount written before are durable (this flush), the header's count and
    /// offset switch to it with one write; then the old table loses its reference (in the cache).
    /// </summary>
    private async ValueTask SwitchSnapshotTableAsync(StagedSnapshotTable staged, CancellationToken ct)
    {
        await _file.FlushAsync(ct).ConfigureAwait(false);
        var hdr = new byte[12];
        BinaryPrimitives.WriteUInt32BigEndian(hdr, (uint)staged.List.Count);
        BinaryPrimitives.WriteUInt64BigEndian(hdr.AsSpan(4), (ulong)staged.Offset);
        await _file.WriteAsync(hdr, 60, ct).ConfigureAwait(false);
        await _file.FlushAsync(ct).ConfigureAwait(false);

        long oldOffset = _h.SnapshotsOffset, oldSize = _snapshotsSize;
        _h.SnapshotCount = staged.List.Count;
        _h.SnapshotsOffset = staged.Offset;
        _snapshots = staged.List;
        _snapshotsSize = staged.Length;
        if (oldOffset != 0 && oldSize > 0)
        {
            _metadata.Remove(oldOffset, oldSize);
            await DropReferenceAsync(oldOffset, oldSize, ct).ConfigureAwait(false);
        }
        if (staged.Length > 0)
            _metadata.Add(staged.Offset, staged.Length, MetadataKind.SnapshotTable);
    }
}
