using System.Buffers.Binary;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

/// <summary>What <see cref="Qcow2Image.AmendAsync"/> may change; null leaves a setting as it is.</summary>
public sealed record Qcow2AmendOptions
{
    /// <summary>2 (compat=0.10) or 3 (compat=1.1).</summary>
    public int? Version { get; init; }
    public bool? LazyRefcounts { get; init; }
    public long? Size { get; init; }
    public int? RefcountBits { get; init; }
    /// <summary>Backing file and format may only be "changed" to what the header already says (as QEMU 7.2).</summary>
    public string? BackingFile { get; init; }
    public string? BackingFormat { get; init; }
}

/// <summary>A change amend refuses, with QEMU's message (and hint, if any).</summary>
public sealed class AmendException(string message, string? hint = null) : ImageException(message)
{
    public string? Hint { get; } = hint;
}

/// <summary>qemu-img amend for qcow2 (QEMU 7.2's qcow2_amend_options, qcow2_upgrade, qcow2_downgrade).</summary>
public sealed partial class Qcow2Image
{
    /// <summary>
    /// Applies <paramref name="o"/> in QEMU's order: upgrade first (features may need v3), then the refcount width,
    /// the header, the backing file check, lazy refcounts, the size, and the downgrade last (after features that v2
    /// cannot hold were removed). <paramref name="status"/> gets (done, total) per step.
    /// </summary>
    public async ValueTask AmendAsync(Qcow2AmendOptions o, Action<long, long>? status = null, CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        CheckWritable();
        int oldVersion = _h.Version, newVersion = o.Version ?? oldVersion;
        int refcountBits = o.RefcountBits ?? _h.RefcountBits;
        if (refcountBits <= 0 || refcountBits > 64 || (refcountBits & (refcountBits - 1)) != 0)
            throw new AmendException("Refcount width must be a power of two and may not exceed 64 bits");

        if (newVersion > oldVersion)
            await UpgradeAsync(newVersion, status, ct).ConfigureAwait(false);

        if (refcountBits != _h.RefcountBits)
        {
            if (newVersion < 3 && refcountBits != 16)
                throw new AmendException("Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)");
            await ChangeRefcountOrderAsync(System.Numerics.BitOperations.Log2((uint)refcountBits), status, ct).ConfigureAwait(false);
        }

        await LockedAsync(WriteHeaderAsync, ct).ConfigureAwait(false);

        if ((o.BackingFile != null || o.BackingFormat != null)
            && (o.BackingFile != _h.BackingFileName || o.BackingFormat != _h.BackingFormat))
            throw new AmendException("Cannot amend the backing file", "You can use 'qemu-img rebase' instead.\n");

        if (o.LazyRefcounts is { } lazy && lazy != _h.LazyRefcounts)
        {
            if (lazy)
            {
                if (newVersion < 3)
                    throw new AmendException("Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)");
                _h.CompatibleFeatures |= CompatLazyRefcounts;
                await LockedAsync(WriteHeaderAsync, ct).ConfigureAwait(false);
            }
            else
            {
                // Refcounts must be right on disk before the image stops saying they may not be.
                await LockedAsync(MarkCleanLockedAsync, ct).ConfigureAwait(false);
                _h.CompatibleFeatures &= ~CompatLazyRefcounts;
                await LockedAsync(WriteHeaderAsync, ct).ConfigureAwait(false);
            }
        }

        if (o.Size is { } size and > 0)
        {
            if ((size & 511) != 0)
                throw new AmendException("The new size must be a multiple of 512");
            await ResizeAsync(size, allowShrink: true, ct: ct).ConfigureAwait(false);
        }

        if (newVersion < oldVersion)
            await DowngradeAsync(newVersion, status, ct).ConfigureAwait(false);
    }

    private async ValueTask LockedAsync(Func<CancellationToken, ValueTask> body, CancellationToken ct)
    {
        await _lock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            await FlushMetadataLockedAsync(ct).ConfigureAwait(false);
            await body(ct).ConfigureAwait(false);
        }
        finally
        {
            Unlock();
        }
    }

    /// <summary>Writes the refcounts lazy refcounts kept in memory, then clears the dirty bit (qcow2_mark_clean).</summary>
    private async ValueTask MarkCleanLockedAsync(CancellationToken ct)
    {
        if (!_dirtyBitSet && !_h.IsDirty)
            return;
        await _rc.WriteDirtyAsync(ct).ConfigureAwait(false);
        await _file.FlushAsync(ct).ConfigureAwait(false);
        _h.IncompatibleFeatures &= ~IncompatDirty;
        await WriteIncompatibleFeaturesAsync(ct).ConfigureAwait(false);
        _dirtyBitSet = false;
    }

    private async ValueTask UpgradeAsync(int version, Action<long, long>? status, CancellationToken ct)
    {
        status?.Invoke(0, 2);
        if (_h.SnapshotCount > 0)
        {
            // v3 needs every snapshot to carry the VM state size and disk size: rewrite the table if one lacks them.
            var snaps = await SnapshotTable.ReadAsync(_file, _h.SnapshotsOffset, _h.SnapshotCount, Size, ct: ct).ConfigureAwait(false);
            if (snaps.Snapshots.Any(s => s.ExtraDataSize < SnapshotTable.MinV3ExtraDataSize))
            {
                foreach (var s in snaps.Snapshots)
                    if (s.ExtraDataSize < SnapshotTable.MinV3ExtraDataSize)
                        s.ExtraDataSize = SnapshotTable.KnownExtraDataSize;
                var table = SnapshotTable.Serialize(snaps.Snapshots);
                await _lock.WaitAsync(ct).ConfigureAwait(false);
                try
                {
                    await FlushMetadataLockedAsync(ct).ConfigureAwait(false);
                    long oldOffset = _h.SnapshotsOffset;
                    _metadata.Remove(oldOffset, snaps.Size);
                    await RewriteSnapshotTableForCheckAsync(table, snaps.Snapshots.Count, oldOffset, snaps.Size, ct).ConfigureAwait(false);
                    _metadata.Add(_h.SnapshotsOffset, table.Length, MetadataKind.SnapshotTable);
                }
                finally
                {
                    Unlock();
                }
            }
        }
        status?.Invoke(1, 2);
        _h.Version = version;
        await LockedAsync(WriteHeaderAsync, ct).ConfigureAwait(false);
        status?.Invoke(2, 2);
    }

    private async ValueTask DowngradeAsync(int version, Action<long, long>? status, CancellationToken ct)
    {
        if (_h.RefcountOrder != 4)
            throw new AmendException("compat=0.10 requires refcount_bits=16");
        if (_h.ExternalDataFile != null || (_h.IncompatibleFeatures & IncompatDataFile) != 0)
            throw new AmendException("Cannot downgrade an image with a data file");
        // v2 snapshots have no disk size of their own (and 32-bit VM state sizes): each must fit the image as it is.
        foreach (var sn in await GetSnapshotsAsync(ct).ConfigureAwait(false))
            if (sn.DiskSize != (ulong)Size || sn.VmStateSize > uint.MaxValue)
                throw new AmendException("Internal snapshots prevent downgrade of image");
        await LockedAsync(MarkCleanLockedAsync, ct).ConfigureAwait(false);
        ulong blocking = _h.IncompatibleFeatures & ~IncompatCompression;
        if (blocking != 0)
            throw new AmendException($"Cannot downgrade an image with incompatible features 0x{blocking:x} set");
        _h.CompatibleFeatures = 0;
        _h.AutoclearFeatures = 0;

        await ExpandZeroClustersAsync(status, ct).ConfigureAwait(false);

        if (_h.CompressionType != CompressionType.Zlib)
        {
            if (await HasCompressedClustersAsync(ct).ConfigureAwait(false))
                throw new AmendException("Cannot downgrade an image with zstd compression type and existing compressed clusters");
            _h.IncompatibleFeatures &= ~IncompatCompression;
            _h.CompressionType = CompressionType.Zlib;
        }
        _h.Version = version;
        try
        {
            await LockedAsync(WriteHeaderAsync, ct).ConfigureAwait(false);
        }
        catch
        {
            _h.Version = 3;
            throw;
        }
    }

    private async ValueTask<bool> HasCompressedClustersAsync(CancellationToken ct)
    {
        for (long off = 0; off < Size;)
        {
            var st = await GetBlockStatusAsync(off, Size - off, ct).ConfigureAwait(false);
            if (st.Compressed)
                return true;
            off += Math.Max(st.Length, 1);
        }
        return false;
    }

    /// <summary>
    /// Turns every zero cluster into a data cluster of zeroes (v2 has no zero flag), in the active table and the
    /// snapshots' tables, as qcow2_expand_zero_clusters: a plain zero cluster of an image without backing file just
    /// becomes unallocated; others get a cluster allocated (refcount = the L2 table's refcount) and zeroed.
    /// </summary>
    private async ValueTask ExpandZeroClustersAsync(Action<long, long>? status, CancellationToken ct)
    {
        var l1s = new List<ulong[]> { _l1 };
        if (_h.SnapshotCount > 0)
        {
            // The table as the downgrade's snapshot check just loaded it (cached), not read again.
            foreach (var s in await GetSnapshotsAsync(ct).ConfigureAwait(false))
                l1s.Add(await ReadSnapshotL1Async(s, 0, ct).ConfigureAwait(false));
        }
        long total = l1s.Sum(t => (long)t.Length), done = 0;
        int entrySize = _ext ? 16 : 8;
        await _lock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            await FlushMetadataLockedAsync(ct).ConfigureAwait(false);
            await _rc.WriteDirtyAsync(ct).ConfigureAwait(false);
            await WaitHostIoDrainedAsync().ConfigureAwait(false);
            // Tables are changed in place on disk (shared ones too): the cache must not hold stale copies.
            _l2Cache.Clear();
            var l2 = new byte[_cs];
            var released = new List<long>();
            foreach (var l1 in l1s)
            {
                foreach (ulong l1e in l1)
                {
                    done++;
                    long l2Off = (long)(l1e & L1OffsetMask);
                    if (l2Off == 0)
                        continue;
                    await _file.ReadAsync(l2, l2Off, ct).ConfigureAwait(false);
                    ulong l2Refcount = await _rc.GetRefcountAsync(l2Off >> _cb, ct).ConfigureAwait(false);
                    bool dirty = false;
                    released.Clear();
                    for (int j = 0; j < _cs / entrySize; j++)
                    {
                        ulong e = BinaryPrimitives.ReadUInt64BigEndian(l2.AsSpan(j * entrySize));
                        var type = TypeOf(e);
                        if (type is not (ClusterType.ZeroPlain or ClusterType.ZeroAlloc))
                            continue;
                        long host;
                        if (type == ClusterType.ZeroPlain)
                        {
                            if (_h.BackingFileName == null)
                            {
                                BinaryPrimitives.WriteUInt64BigEndian(l2.AsSpan(j * entrySize), 0);
                                dirty = true;
                                continue;
                            }
                            host = await _rc.AllocateClustersAsync(1, ct).ConfigureAwait(false);
                            if (l2Refcount > 1)
                                await _rc.UpdateAsync(host >> _cb, 1, (long)l2Refcount - 1, ct).ConfigureAwait(false);
                            await _rc.WriteDirtyAsync(ct).ConfigureAwait(false);
                        }
                        else
                        {
                            host = (long)(e & L2OffsetMask);
                            // A preallocated zero cluster that another table still uses for data (a snapshot taken
                            // before the zero write) must not be zeroed in place: QEMU 7.2 does, and destroys the
                            // snapshot's data. This table gets a cluster of its own; the old one loses its reference
                            // once the table no longer points at it.
                            if (await _rc.GetRefcountAsync(host >> _cb, ct).ConfigureAwait(false) > l2Refcount)
                            {
                                released.Add(host);
                                host = await _rc.AllocateClustersAsync(1, ct).ConfigureAwait(false);
                                if (l2Refcount > 1)
                                    await _rc.UpdateAsync(host >> _cb, 1, (long)l2Refcount - 1, ct).ConfigureAwait(false);
                                await _rc.WriteDirtyAsync(ct).ConfigureAwait(false);
                            }
                        }
                        if (_metadata.Overlap(host >> _cb, 1) is { } what)
                            throw new CorruptImageException($"Preventing invalid write on metadata (overlaps with {what}) in '{_file.Name}'");
                        await _file.WriteZeroesAsync(host, _cs, mayUnmap: false, ct).ConfigureAwait(false);
                        ulong ne = (ulong)host | (l2Refcount == 1 ? OflagCopied : 0);
                        BinaryPrimitives.WriteUInt64BigEndian(l2.AsSpan(j * entrySize), ne);
                        dirty = true;
                    }
                    if (dirty)
                    {
                        // Data clusters and their refcounts are durable before the table points at them.
                        await _file.FlushAsync(ct).ConfigureAwait(false);
                        await _file.WriteAsync(l2, l2Off, ct).ConfigureAwait(false);
                        await _file.FlushAsync(ct).ConfigureAwait(false);
                        if (released.Count > 0)
                        {
                            foreach (long old in released)
                                await _rc.UpdateAsync(old >> _cb, 1, -(long)l2Refcount, ct).ConfigureAwait(false);
                            await _rc.WriteDirtyAsync(ct).ConfigureAwait(false);
                            await _file.FlushAsync(ct).ConfigureAwait(false);
                        }
                    }
                    status?.Invoke(done, total);
                }
            }
        }
        finally
        {
            Unlock();
        }
    }
}
