using Strata.Images.Bitmaps;
using static Strata.Images.Qcow2.Qcow2Constants;
using Slot = Strata.Images.Qcow2.PersistentBitmaps.Slot;

namespace Strata.Images.Qcow2;

/// <summary>
/// Persistent dirty bitmaps, as QEMU 7.2 keeps them: loaded at open (marked in use on disk when read-write),
/// fed by every guest write, zero and discard while enabled, stored back and marked not in use on clean close.
/// </summary>
public sealed partial class Qcow2Image
{
    private static int s_nodeCounter;
    private readonly DirtyBitmapSet _bitmaps = new();
    private readonly List<long> _freedBitmapData = [];

    /// <summary>The node's dirty bitmaps (persistent ones from the image and any the block layer adds).</summary>
    public DirtyBitmapSet DirtyBitmaps => _bitmaps;

    /// <summary>The node name used in messages (QEMU's bdrv_get_device_or_node_name); the block layer sets it.</summary>
    public string NodeName { get; set; } = "#block" + (Interlocked.Increment(ref s_nodeCounter) * 2 + 100);

    /// <summary>The bitmap directory as it is on disk (flags included), empty when there is none.</summary>
    public async ValueTask<IReadOnlyList<BitmapDirectoryEntry>> ReadBitmapDirectoryAsync(CancellationToken ct = default)
    {
        if (_h.Bitmaps is not { Count: > 0 } ext)
            return [];
        return await BitmapDirectory.ReadAsync(_file, ext, _cs, Size, ct).ConfigureAwait(false);
    }

    /// <summary>measure's "bitmaps size": room the persistent bitmaps take in an image of the cluster size.</summary>
    public long PersistentBitmapsSize(int clusterSize) => PersistentBitmaps.StoredSize(_bitmaps.All, clusterSize);

    /// <summary>
    /// block-dirty-bitmap-add: a new bitmap, empty. A persistent one must fit QEMU's constraints and is written to
    /// the image at close. <paramref name="granularity"/> null = QEMU's default for this cluster size.
    /// </summary>
    public ValueTask<DirtyBitmap> AddDirtyBitmapAsync(string name, uint? granularity = null, bool persistent = false, bool disabled = false, CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (string.IsNullOrEmpty(name))
            throw new BitmapException("Bitmap name cannot be empty");
        uint g = granularity ?? DirtyBitmapSet.DefaultGranularity(_cs);
        if (g < 512 || !System.Numerics.BitOperations.IsPow2(g))
            throw new BitmapException("Granularity must be power of 2 and at least 512");
        if (persistent)
            CheckCanStoreNew(name, g);
        if (((Size + g - 1) >> System.Numerics.BitOperations.TrailingZeroCount(g)) > DirtyBitmap.MaxBits)
            throw new BitmapException("Too much space will be occupied by the bitmap. Use larger granularity");
        var bm = new DirtyBitmap(Size, g, name) { Persistent = persistent, Enabled = !disabled };
        _bitmaps.Add(bm);
        return ValueTask.FromResult(bm);
    }

    /// <summary>qcow2_co_can_store_new_dirty_bitmap.</summary>
    private void CheckCanStoreNew(string name, uint granularity)
    {
        if (_bitmaps.Find(name) != null)
            throw new BitmapException($"Bitmap already exists: {name}");
        try
        {
            if (_h.Version < 3)
                throw new BitmapException("Cannot store dirty bitmaps in qcow2 v2 files");
            PersistentBitmaps.CheckConstraints(name, granularity, Size, _cs);
            long count = 1, dirSize = BitmapDirectory.EntrySize(System.Text.Encoding.UTF8.GetByteCount(name));
            foreach (var b in _bitmaps.All)
            {
                if (!b.Persistent)
                    continue;
                count++;
                dirSize += BitmapDirectory.EntrySize(System.Text.Encoding.UTF8.GetByteCount(b.Name ?? ""));
            }
            if (count > MaxBitmaps)
                throw new BitmapException("Maximum number of persistent bitmaps is already reached");
            if (dirSize > MaxBitmapDirectorySize)
                throw new BitmapException("Not enough space in the bitmap directory");
        }
        catch (BitmapException e)
        {
            throw new BitmapException($"Can't make bitmap '{name}' persistent in '{NodeName}': {e.Message}");
        }
    }

    /// <summary>
    /// block-dirty-bitmap-remove: drops the bitmap; a persistent one leaves the image at once (directory rewritten,
    /// its clusters freed), even when it was inconsistent.
    /// </summary>
    public async ValueTask RemoveDirtyBitmapAsync(string name, CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var bm = _bitmaps.Lookup(name);
        DirtyBitmapSet.Check(bm, BitmapCheck.Busy | BitmapCheck.ReadOnly);
        if (bm.Persistent)
            await RemoveStoredBitmapAsync(name, ct).ConfigureAwait(false);
        _bitmaps.Remove(bm);
    }

    /// <summary>
    /// bdrv_remove_persistent_dirty_bitmap: the named bitmap leaves the image's directory now (its clusters freed);
    /// the bitmap in memory stays (a transaction's remove releases it only at commit). Absent = nothing to do.
    /// </summary>
    public async ValueTask RemoveStoredBitmapAsync(string name, CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_h.Bitmaps is not { Count: > 0 })
            return;
        await _lock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            var slots = await LoadSlotsLockedAsync(ct).ConfigureAwait(false);
            int i = slots.FindIndex(s => s.Name == name);
            if (i >= 0)
            {
                CheckWritable(); // only a bitmap the file holds needs a write (one added to a read-only node does not)
                var gone = slots[i];
                slots.RemoveAt(i);
                await UpdateDirectoryLockedAsync(slots, ct).ConfigureAwait(false);
                await FreeBitmapClustersLockedAsync(gone.TableOffset, gone.TableSize, ct).ConfigureAwait(false);
                await FlushMetadataLockedAsync(ct).ConfigureAwait(false);
                await DiscardFreedBitmapDataLockedAsync(ct).ConfigureAwait(false);
            }
        }
        finally
        {
            Unlock();
        }
    }

    /// <summary>qcow2_truncate_bitmaps_check: every bitmap must be usable to follow a resize (an inconsistent one is not).</summary>
    private void CheckBitmapsResizable(long newSize)
    {
        // Oldest first: loaded bitmaps in directory order, as qsd names the first inconsistent one.
        foreach (var b in _bitmaps.All.Reverse())
        {
            DirtyBitmapSet.Check(b, BitmapCheck.Default);
            if (((newSize + b.Granularity - 1) >> b.GranularityBits) > DirtyBitmap.MaxBits)
                throw new BitmapException($"Bitmap '{b.Name}' would be too large for the new size; use a larger granularity");
        }
    }

    /// <summary>bdrv_dirty_bitmap_truncate: bitmaps follow the new disk size (new space clean).</summary>
    private void ResizeBitmaps(long newSize)
    {
        foreach (var b in _bitmaps.All)
            b.Resize(newSize);
    }

    /// <summary>Marks a guest range dirty in the enabled bitmaps (every write path calls this; cheap when none is enabled).</summary>
    private void RecordDirty(long offset, long length)
    {
        if (_bitmaps.HasEnabled)
            _bitmaps.RecordWrite(offset, length);
    }

    /// <summary>
    /// qcow2_load_dirty_bitmaps at open: every bitmap of the directory becomes a persistent <see cref="DirtyBitmap"/>
    /// (one left in use is inconsistent, its data unread); read-write, the loaded ones are marked in use on disk.
    /// </summary>
    /// <param name="directory">The directory when the open already read it; null reads it.</param>
    private async ValueTask LoadBitmapsAsync(List<BitmapDirectoryEntry>? directory, CancellationToken ct)
    {
        if (_h.Bitmaps is not { Count: > 0 } ext)
            return;
        var entries = directory ?? await BitmapDirectory.ReadAsync(_file, ext, _cs, Size, ct).ConfigureAwait(false);
        var slots = new List<Slot>(entries.Count);
        var loaded = new List<DirtyBitmap>();
        bool needsUpdate = false;
        foreach (var e in entries)
        {
            var slot = new Slot(e);
            slots.Add(slot);
            bool known = _bitmaps.Find(e.Name) != null || loaded.Exists(b => b.Name == e.Name);
            if (e.InUse && known)
                continue;
            if (known)
                throw new BitmapException($"Bitmap already exists: {e.Name} in '{_file.Name}'");
            if (((Size + e.Granularity - 1) >> e.GranularityBits) > DirtyBitmap.MaxBits)
                throw new CorruptImageException($"Bitmap '{e.Name}' is too large for the disk (granularity {e.Granularity}) in '{_file.Name}'");
            var bm = new DirtyBitmap(Size, e.Granularity, e.Name) { Persistent = true, Enabled = e.Auto && !e.InUse, ReadOnly = _readOnly };
            if (e.InUse)
                bm.Inconsistent = true;
            else
            {
                await PersistentBitmaps.LoadDataAsync(_file, e, bm, _cs, ct).ConfigureAwait(false);
                slot.Flags |= BitmapDirectoryEntry.FlagInUse;
                needsUpdate = true;
            }
            loaded.Add(bm);
        }
        // Only a fully loaded directory becomes the node's bitmaps (a failed open must not store anything back).
        foreach (var bm in loaded)
            _bitmaps.Add(bm);
        _bitmaps.RefreshEnabled();
        if (needsUpdate && !_readOnly)
            await UpdateDirectoryInPlaceAsync(slots, ct).ConfigureAwait(false);
    }

    /// <summary>
    /// update_ext_header_and_dir_in_place: flags only. The autoclear bit is dropped around the rewrite, so a crash
    /// in between leaves bitmaps that every reader ignores, never a half-written directory that one trusts.
    /// </summary>
    private async ValueTask UpdateDirectoryInPlaceAsync(List<Slot> slots, CancellationToken ct)
    {
        var ext = _h.Bitmaps!;
        var raw = BitmapDirectory.Serialize([.. slots.Select(s => s.ToEntry())]);
        if ((ulong)raw.Length != ext.DirectorySize)
            throw new CorruptImageException($"Can't update bitmap directory of '{_file.Name}': Invalid argument");
        _h.AutoclearFeatures &= ~AutoclearBitmaps;
        await WriteHeaderAsync(ct).ConfigureAwait(false);
        await _file.WriteAsync(raw, (long)ext.DirectoryOffset, ct).ConfigureAwait(false);
        await _file.FlushAsync(ct).ConfigureAwait(false);
        _h.AutoclearFeatures |= AutoclearBitmaps;
        await WriteHeaderAsync(ct).ConfigureAwait(false);
    }

    private async ValueTask<List<Slot>> LoadSlotsLockedAsync(CancellationToken ct)
    {
        if (_h.Bitmaps is not { Count: > 0 } ext)
            return [];
        var entries = await BitmapDirectory.ReadAsync(_file, ext, _cs, Size, ct).ConfigureAwait(false);
        return [.. entries.Select(e => new Slot(e))];
    }

    /// <summary>
    /// qcow2_store_persistent_dirty_bitmaps at clean close: each changed bitmap gets fresh data clusters and a
    /// fresh table, a new directory is written and made durable, the header switches to it, and only then are
    /// the old directory and tables freed. Inconsistent and read-only bitmaps keep their entries as they are.
    /// </summary>
    private async ValueTask StoreBitmapsAsync(CancellationToken ct)
    {
        var persistent = _bitmaps.All.Where(b => b.Persistent && !b.Inconsistent && !b.ReadOnly).ToList();
        if (persistent.Count == 0)
            return;
        await _lock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            var slots = await LoadSlotsLockedAsync(ct).ConfigureAwait(false);
            var drop = new List<(long Offset, uint Size)>();
            long count = slots.Count;
            long dirSize = (long)(_h.Bitmaps?.DirectorySize ?? 0);
            foreach (var bm in persistent)
            {
                string name = bm.Name!;
                try
                {
                    PersistentBitmaps.CheckConstraints(name, bm.Granularity, Size, _cs);
                }
                catch (BitmapException e)
                {
                    throw new BitmapException($"Bitmap '{name}' doesn't satisfy the constraints: {e.Message}");
                }
                var slot = slots.Find(s => s.Name == name);
                if (slot == null)
                {
                    if (++count > MaxBitmaps)
                        throw new BitmapException("Too many persistent bitmaps");
                    dirSize += BitmapDirectory.EntrySize(System.Text.Encoding.UTF8.GetByteCount(name));
                    if (dirSize > MaxBitmapDirectorySize)
                        throw new BitmapException("Bitmap directory is too large");
                    slot = new Slot(new BitmapDirectoryEntry(0, 0, 0, 1, 0, name, []));
                    slots.Add(slot);
                }
                else
                {
                    if ((slot.Flags & BitmapDirectoryEntry.FlagInUse) == 0)
                        throw new BitmapException($"Bitmap '{name}' already exists in the image");
                    drop.Add((slot.TableOffset, slot.TableSize));
                    slot.TableOffset = 0;
                    slot.TableSize = 0;
                }
                slot.Flags = bm.Enabled ? BitmapDirectoryEntry.FlagAuto : 0;
                slot.GranularityBits = (byte)bm.GranularityBits;
                slot.Bitmap = bm;
            }
            foreach (var slot in slots)
                if (slot.Bitmap != null)
                    await StoreBitmapLockedAsync(slot, ct).ConfigureAwait(false);
            await UpdateDirectoryLockedAsync(slots, ct).ConfigureAwait(false);
            foreach (var (offset, size) in drop)
                await FreeBitmapClustersLockedAsync(offset, size, ct).ConfigureAwait(false);
            await FlushMetadataLockedAsync(ct).ConfigureAwait(false);
            await DiscardFreedBitmapDataLockedAsync(ct).ConfigureAwait(false);
        }
        finally
        {
            Unlock();
        }
    }

    /// <summary>store_bitmap: data clusters (only where something is dirty), then the table.</summary>
    private async ValueTask StoreBitmapLockedAsync(Slot slot, CancellationToken ct)
    {
        var bm = slot.Bitmap!;
        long size = bm.Size;
        long tbSize = (bm.SerializationSize(0, size) + _cs - 1) / _cs;
        if (tbSize > BitmapDirectory.MaxTableSize || tbSize * _cs > BitmapDirectory.MaxPhysSize)
            throw new BitmapException($"Bitmap '{slot.Name}' is too big");
        var table = new ulong[tbSize];
        long limit = bm.SerializationCoverage(_cs);
        var buf = new byte[_cs];
        long offset = 0;
        while ((offset = bm.NextDirty(offset)) >= 0)
        {
            offset -= offset % limit;
            long end = Math.Min(size, offset + limit);
            long host = await _rc.AllocateClustersAsync(1, ct).ConfigureAwait(false);
            table[offset / limit] = (ulong)host;
            Array.Clear(buf);
            bm.SerializePart(buf, offset, end - offset);
            await CheckBitmapTargetAsync(host, _cs).ConfigureAwait(false);
            await _file.WriteAsync(buf, host, ct).ConfigureAwait(false);
            offset = end;
            if (offset >= size)
                break;
        }
        long tableBytes = tbSize * 8;
        long tableHost = await _rc.AllocateClustersAsync((tableBytes + _cs - 1) / _cs, ct).ConfigureAwait(false);
        await CheckBitmapTargetAsync(tableHost, tableBytes).ConfigureAwait(false);
        var raw = new byte[tableBytes];
        for (int i = 0; i < table.Length; i++)
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(raw.AsSpan(i * 8), table[i]);
        await _file.WriteAsync(raw, tableHost, ct).ConfigureAwait(false);
        slot.TableOffset = tableHost;
        slot.TableSize = (uint)tbSize;
    }

    /// <summary>qcow2_pre_write_overlap_check for freshly allocated bitmap clusters.</summary>
    private async ValueTask CheckBitmapTargetAsync(long host, long bytes)
    {
        var overlap = _metadata.Overlap(host >> _cb, (bytes + _cs - 1) >> _cb);
        if (overlap != null)
            throw await SignalCorruptionAsync($"Preventing invalid write on metadata (overlaps with {overlap})").ConfigureAwait(false);
    }

    /// <summary>
    /// update_ext_header_and_dir: the new directory goes to fresh clusters and is durable (with the refcounts of
    /// everything it references) before the header points at it; the old directory is freed afterwards.
    /// </summary>
    private async ValueTask UpdateDirectoryLockedAsync(List<Slot> slots, CancellationToken ct)
    {
        var old = _h.Bitmaps;
        BitmapsExtension? ext = null;
        if (slots.Count > 0)
        {
            var raw = BitmapDirectory.Serialize([.. slots.Select(s => s.ToEntry())]);
            long dirOffset = await _rc.AllocateClustersAsync((raw.Length + _cs - 1) / _cs, ct).ConfigureAwait(false);
            await CheckBitmapTargetAsync(dirOffset, raw.Length).ConfigureAwait(false);
            await _file.WriteAsync(raw, dirOffset, ct).ConfigureAwait(false);
            await FlushMetadataLockedAsync(ct).ConfigureAwait(false);
            ext = new BitmapsExtension((uint)slots.Count, (ulong)raw.Length, (ulong)dirOffset);
            _h.AutoclearFeatures |= AutoclearBitmaps;
        }
        else
        {
            _h.AutoclearFeatures &= ~AutoclearBitmaps;
        }
        _h.Bitmaps = ext;
        await WriteHeaderAsync(ct).ConfigureAwait(false);
        if (old is { DirectorySize: > 0 })
        {
            _metadata.Remove((long)old.DirectoryOffset, MetadataKind.BitmapDirectory);
            _rc.DeferFree((long)old.DirectoryOffset, (long)old.DirectorySize);
        }
        if (ext != null)
            _metadata.Add((long)ext.DirectoryOffset, (long)ext.DirectorySize, MetadataKind.BitmapDirectory);
    }

    /// <summary>
    /// Freed bitmap data clusters are discarded in the file, as QEMU does (QCOW2_DISCARD_ALWAYS), once their zero
    /// refcount is durable; those reused since keep their data.
    /// </summary>
    private async ValueTask DiscardFreedBitmapDataLockedAsync(CancellationToken ct)
    {
        foreach (long off in _freedBitmapData)
            if (await _rc.GetRefcountAsync(off >> _cb, ct).ConfigureAwait(false) == 0)
                await _file.DiscardAsync(off, _cs, ct).ConfigureAwait(false);
        _freedBitmapData.Clear();
    }

    /// <summary>free_bitmap_clusters: the data clusters a table references, then the table (freed at the next flush).</summary>
    private async ValueTask FreeBitmapClustersLockedAsync(long tableOffset, uint tableSize, CancellationToken ct)
    {
        if (tableOffset == 0 || tableSize == 0)
            return;
        ulong[] table;
        try
        {
            table = await PersistentBitmaps.LoadTableAsync(_file, tableOffset, tableSize, _cs, ct).ConfigureAwait(false);
        }
        catch (CorruptImageException)
        {
            return; // QEMU leaves a broken table's clusters leaked
        }
        // A cluster past the end of the file was never allocated: QEMU's free fails there and goes on (a leak
        // at worst); so does this one, silently.
        long fileEnd = _file.Length;
        foreach (ulong e in table)
        {
            long off = (long)(e & BitmapDirectory.TableEntryOffsetMask);
            if (off != 0 && off < fileEnd)
            {
                _rc.DeferFree(off, _cs);
                _freedBitmapData.Add(off);
            }
        }
        if (tableOffset + tableSize * 8L <= fileEnd)
            _rc.DeferFree(tableOffset, tableSize * 8L);
    }
}
