using System.Buffers.Binary;
using System.Text;
using Strata.Images.Storage;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

/// <summary>
/// One internal snapshot: an entry of the snapshot table (qcow2.md §7; QEMU's <c>QCowSnapshot</c>).
/// Every on-disk field is kept, including extra data Strata does not know, so that the table can be
/// written back unchanged.
/// </summary>
public sealed class Qcow2Snapshot
{
    /// <summary>Host offset of the snapshot's L1 table (QEMU requires it cluster aligned).</summary>
    public ulong L1TableOffset { get; set; }

    /// <summary>Number of entries of the snapshot's L1 table.</summary>
    public uint L1Size { get; set; }

    /// <summary>The unique ID as stored (no NUL).</summary>
    public byte[] IdBytes { get; set; } = [];

    /// <summary>The name as stored (no NUL).</summary>
    public byte[] NameBytes { get; set; } = [];

    /// <summary>The ID as QEMU shows it: the bytes up to the first NUL, as UTF-8.</summary>
    public string Id
    {
        get => CString(IdBytes);
        set => IdBytes = Encoding.UTF8.GetBytes(value);
    }

    /// <summary>The name as QEMU shows it: the bytes up to the first NUL, as UTF-8.</summary>
    public string Name
    {
        get => CString(NameBytes);
        set => NameBytes = Encoding.UTF8.GetBytes(value);
    }

    public uint DateSeconds { get; set; }
    public uint DateNanoseconds { get; set; }

    /// <summary>Guest clock when the snapshot was taken, in nanoseconds.</summary>
    public ulong VmClockNanoseconds { get; set; }

    /// <summary>Size of the saved VM state: the 64-bit extra field when present, else the 32-bit header field.</summary>
    public ulong VmStateSize { get; set; }

    /// <summary>Virtual disk size when the snapshot was taken (the image's size when the entry does not record it).</summary>
    public ulong DiskSize { get; set; }

    /// <summary>Instruction count of record/replay; <see cref="ulong.MaxValue"/> (-1) when unknown or absent.</summary>
    public ulong Icount { get; set; } = ulong.MaxValue;

    /// <summary>extra_data_size as stored (after truncation to QEMU's limit when read in repair mode).</summary>
    public uint ExtraDataSize { get; set; } = SnapshotTable.KnownExtraDataSize;

    /// <summary>Extra data past the fields Strata knows (bytes 24 and up of the extra data), preserved.</summary>
    public byte[] UnknownExtraData { get; set; } = [];

    private static string CString(byte[] b)
    {
        int n = Array.IndexOf(b, (byte)0);
        return Encoding.UTF8.GetString(b, 0, n < 0 ? b.Length : n);
    }
}

/// <summary>The result of reading a snapshot table.</summary>
/// <param name="Snapshots">The entries read (fewer than asked for when a repair discarded some).</param>
/// <param name="Size">Bytes the table occupies on disk from its offset (what QEMU counts references for).</param>
/// <param name="Discarded">Entries dropped off the end because the table was too big (repair mode only).</param>
/// <param name="ExtraDataTruncated">Entries whose oversized extra data was cut to the limit (repair mode only).</param>
public sealed record SnapshotTableReadResult(List<Qcow2Snapshot> Snapshots, long Size, int Discarded, int ExtraDataTruncated);

/// <summary>
/// Reads and writes the qcow2 snapshot table as QEMU 7.2 does (qcow2-snapshot.c <c>qcow2_do_read_snapshots</c>,
/// <c>qcow2_write_snapshots</c>): entries back to back, each starting on an 8-byte boundary.
/// </summary>
public static class SnapshotTable
{
    /// <summary>Size of the fixed part of an entry.</summary>
    public const int HeaderSize = 40;

    /// <summary>Extra data QEMU 7.2 knows and writes: vm_state_size_large, disk_size, icount.</summary>
    public const int KnownExtraDataSize = 24;

    /// <summary>Extra data a v3 image's entries must have at least (vm_state_size_large and disk_size).</summary>
    public const int MinV3ExtraDataSize = 16;

    /// <summary>
    /// Reads <paramref name="count"/> entries at <paramref name="offset"/>. Without <paramref name="repair"/> a
    /// table beyond QEMU's limits throws <see cref="CorruptImageException"/>; with it, oversized extra data is cut
    /// to the limit and entries past 64 MiB are dropped, as <c>qemu-img check -r all</c> does, and each such repair
    /// is described through <paramref name="report"/> in QEMU's words.
    /// </summary>
    /// <param name="virtualSize">The image's virtual size, used as the disk size of entries that do not record one.</param>
    public static async ValueTask<SnapshotTableReadResult> ReadAsync(IStorage file, long offset, int count, long virtualSize,
        bool repair = false, Action<string>? report = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(file);
        if (count < 0 || count > MaxSnapshots)
            throw new CorruptImageException($"Too many snapshots ({(uint)count}) in '{file.Name}'");
        if (count > 0 && (offset <= 0 || offset > MaxHostOffset))
            throw new CorruptImageException($"Snapshot table offset 0x{offset:x} is invalid in '{file.Name}'");
        var r = await ReadCoreAsync(file, offset, count, virtualSize, repair, report, ct).ConfigureAwait(false);
        return r.Result ?? throw new CorruptImageException($"{r.Error} in '{file.Name}'" + (r.Hint != null ? $" ({r.Hint})" : ""));
    }

    /// <summary>What <see cref="ReadCoreAsync"/> found: the table, or QEMU's error text and hint.</summary>
    internal readonly record struct CoreReadResult(SnapshotTableReadResult? Result, string? Error, string? Hint);

    /// <summary>qcow2_do_read_snapshots: like <see cref="ReadAsync"/>, but reports limits exceeded with QEMU's own words.</summary>
    internal static async ValueTask<CoreReadResult> ReadCoreAsync(IStorage file, long offset, int count, long virtualSize,
        bool repair, Action<string>? report, CancellationToken ct)
    {
        var list = new List<Qcow2Snapshot>(Math.Min(count, 1024));
        if (count <= 0)
            return new CoreReadResult(new SnapshotTableReadResult(list, 0, 0, 0), null, null);

        var reader = new Reader(file);
        long pos = offset, tableLength = 0;
        int discarded = 0, truncated = 0;
        var hdr = new byte[HeaderSize];
        var extra = new byte[KnownExtraDataSize];
        for (int i = 0; i < count; i++)
        {
            ct.ThrowIfCancellationRequested();
            long preEntry = pos;
            tableLength = RoundUp8(tableLength);
            pos = RoundUp8(pos);
            await reader.ReadAsync(hdr, pos, ct).ConfigureAwait(false);
            pos += HeaderSize;
            var sn = new Qcow2Snapshot
            {
                L1TableOffset = BinaryPrimitives.ReadUInt64BigEndian(hdr),
                L1Size = BinaryPrimitives.ReadUInt32BigEndian(hdr.AsSpan(8)),
                DateSeconds = BinaryPrimitives.ReadUInt32BigEndian(hdr.AsSpan(16)),
                DateNanoseconds = BinaryPrimitives.ReadUInt32BigEndian(hdr.AsSpan(20)),
                VmClockNanoseconds = BinaryPrimitives.ReadUInt64BigEndian(hdr.AsSpan(24)),
                VmStateSize = BinaryPrimitives.ReadUInt32BigEndian(hdr.AsSpan(32)),
                ExtraDataSize = BinaryPrimitives.ReadUInt32BigEndian(hdr.AsSpan(36)),
            };
            int idSize = BinaryPrimitives.ReadUInt16BigEndian(hdr.AsSpan(12));
            int nameSize = BinaryPrimitives.ReadUInt16BigEndian(hdr.AsSpan(14));

            bool truncateExtra = false;
            if (sn.ExtraDataSize > MaxSnapshotExtraData)
            {
                if (!repair)
                    return new CoreReadResult(null, $"Too much extra metadata in snapshot table entry {i}",
                        "You can force-remove this extra metadata with qemu-img check -r all");
                report?.Invoke($"Discarding too much extra metadata in snapshot table entry {i} ({sn.ExtraDataSize} > {MaxSnapshotExtraData})");
                truncated++;
                truncateExtra = true;
            }

            int known = (int)Math.Min(KnownExtraDataSize, sn.ExtraDataSize);
            Array.Clear(extra);
            await reader.ReadAsync(extra.AsMemory(0, known), pos, ct).ConfigureAwait(false);
            pos += known;
            if (sn.ExtraDataSize >= 8)
                sn.VmStateSize = BinaryPrimitives.ReadUInt64BigEndian(extra);
            sn.DiskSize = sn.ExtraDataSize >= 16 ? BinaryPrimitives.ReadUInt64BigEndian(extra.AsSpan(8)) : (ulong)virtualSize;
            sn.Icount = sn.ExtraDataSize >= 24 ? BinaryPrimitives.ReadUInt64BigEndian(extra.AsSpan(16)) : ulong.MaxValue;
            if (sn.ExtraDataSize > KnownExtraDataSize)
            {
                long extraEnd = pos + sn.ExtraDataSize - KnownExtraDataSize;
                if (truncateExtra)
                    sn.ExtraDataSize = MaxSnapshotExtraData;
                var unknown = new byte[sn.ExtraDataSize - KnownExtraDataSize];
                await reader.ReadAsync(unknown, pos, ct).ConfigureAwait(false);
                sn.UnknownExtraData = unknown;
                pos = extraEnd;
            }

            sn.IdBytes = new byte[idSize];
            await reader.ReadAsync(sn.IdBytes, pos, ct).ConfigureAwait(false);
            pos += idSize;
            sn.NameBytes = new byte[nameSize];
            await reader.ReadAsync(sn.NameBytes, pos, ct).ConfigureAwait(false);
            pos += nameSize;

            tableLength += HeaderSize + sn.ExtraDataSize + idSize + nameSize;
            if (tableLength > MaxSnapshotTableSize || pos - offset > int.MaxValue)
            {
                if (!repair)
                    return new CoreReadResult(null, "Snapshot table is too big",
                        $"You can force-remove all {count - i} overhanging snapshots with qemu-img check -r all");
                report?.Invoke($"Discarding {count - i} overhanging snapshots (snapshot table is too big)");
                discarded += count - i;
                pos = preEntry;
                break;
            }
            list.Add(sn);
        }
        return new CoreReadResult(new SnapshotTableReadResult(list, pos - offset, discarded, truncated), null, null);
    }

    /// <summary>Bytes <see cref="Serialize"/> produces (QEMU's snapshots_size: no padding after the last entry).</summary>
    public static long SerializedSize(IReadOnlyList<Qcow2Snapshot> snapshots)
    {
        ArgumentNullException.ThrowIfNull(snapshots);
        long size = 0;
        foreach (var sn in snapshots)
        {
            size = RoundUp8(size);
            size += HeaderSize + Math.Max(KnownExtraDataSize, (long)KnownExtraDataSize + sn.UnknownExtraData.Length);
            size += CLength(sn.IdBytes) + CLength(sn.NameBytes);
        }
        return size;
    }

    /// <summary>
    /// The table as QEMU 7.2 writes it: every entry gets at least the 24 known bytes of extra data (more when
    /// unknown extra data is preserved), the 32-bit VM state size is 0 when the size does not fit, and the ID
    /// and name end at their first NUL.
    /// </summary>
    public static byte[] Serialize(IReadOnlyList<Qcow2Snapshot> snapshots)
    {
        long size = SerializedSize(snapshots);
        if (snapshots.Count > MaxSnapshots || size > MaxSnapshotTableSize)
            throw new ImageException($"The snapshot table would exceed QEMU's limits ({snapshots.Count} entries, {size} bytes)");
        var buf = new byte[size];
        var s = buf.AsSpan();
        int pos = 0;
        foreach (var sn in snapshots)
        {
            pos = (int)RoundUp8(pos);
            int idLen = CLength(sn.IdBytes), nameLen = CLength(sn.NameBytes);
            if (idLen > ushort.MaxValue || nameLen > ushort.MaxValue)
                throw new ImageException("A snapshot ID or name is longer than 65535 bytes");
            int extraSize = KnownExtraDataSize + sn.UnknownExtraData.Length;
            BinaryPrimitives.WriteUInt64BigEndian(s[pos..], sn.L1TableOffset);
            BinaryPrimitives.WriteUInt32BigEndian(s[(pos + 8)..], sn.L1Size);
            BinaryPrimitives.WriteUInt16BigEndian(s[(pos + 12)..], (ushort)idLen);
            BinaryPrimitives.WriteUInt16BigEndian(s[(pos + 14)..], (ushort)nameLen);
            BinaryPrimitives.WriteUInt32BigEndian(s[(pos + 16)..], sn.DateSeconds);
            BinaryPrimitives.WriteUInt32BigEndian(s[(pos + 20)..], sn.DateNanoseconds);
            BinaryPrimitives.WriteUInt64BigEndian(s[(pos + 24)..], sn.VmClockNanoseconds);
            // Older readers see a disk-only snapshot rather than a truncated VM state size.
            BinaryPrimitives.WriteUInt32BigEndian(s[(pos + 32)..], sn.VmStateSize <= uint.MaxValue ? (uint)sn.VmStateSize : 0);
            BinaryPrimitives.WriteUInt32BigEndian(s[(pos + 36)..], (uint)extraSize);
            pos += HeaderSize;
            BinaryPrimitives.WriteUInt64BigEndian(s[pos..], sn.VmStateSize);
            BinaryPrimitives.WriteUInt64BigEndian(s[(pos + 8)..], sn.DiskSize);
            BinaryPrimitives.WriteUInt64BigEndian(s[(pos + 16)..], sn.Icount);
            pos += KnownExtraDataSize;
            sn.UnknownExtraData.CopyTo(s[pos..]);
            pos += sn.UnknownExtraData.Length;
            sn.IdBytes.AsSpan(0, idLen).CopyTo(s[pos..]);
            pos += idLen;
            sn.NameBytes.AsSpan(0, nameLen).CopyTo(s[pos..]);
            pos += nameLen;
        }
        return buf;
    }

    private static int CLength(byte[] b)
    {
        int n = Array.IndexOf(b, (byte)0);
        return n < 0 ? b.Length : n;
    }

    private static long RoundUp8(long v) => (v + 7) & ~7L;

    /// <summary>Reads through a window so that a table of many small entries costs few I/Os.</summary>
    private sealed class Reader(IStorage file)
    {
        private const int Window = 64 * 1024;
        private readonly byte[] _buf = new byte[Window];
        private long _start = -1;

        public async ValueTask ReadAsync(Memory<byte> dest, long offset, CancellationToken ct)
        {
            while (dest.Length > 0)
            {
                if (_start < 0 || offset < _start || offset >= _start + Window)
                {
                    _start = offset;
                    // The table usually ends the file: read only what is there (the rest reads as zero anyway).
                    int there = (int)Math.Clamp(file.Length - offset, 0, Window);
                    Array.Clear(_buf, there, Window - there);
                    if (there > 0)
                        await file.ReadAsync(_buf.AsMemory(0, there), offset, ct).ConfigureAwait(false);
                }
                int at = (int)(offset - _start);
                int n = Math.Min(dest.Length, Window - at);
                _buf.AsMemory(at, n).CopyTo(dest);
                dest = dest[n..];
                offset += n;
            }
        }
    }
}
