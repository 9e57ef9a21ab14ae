using System.Buffers.Binary;
using System.Text;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

/// <summary>One entry of the bitmap directory (qcow2 "bitmaps" extension).</summary>
public sealed record BitmapDirectoryEntry(
    long TableOffset, uint TableSize, uint Flags, byte Type, byte GranularityBits, string Name, byte[] ExtraData)
{
    public const uint FlagInUse = 1;
    public const uint FlagAuto = 2;
    public const uint FlagExtraDataCompatible = 4;
    public bool InUse => (Flags & FlagInUse) != 0;
    public bool Auto => (Flags & FlagAuto) != 0;
    public uint Granularity => 1u << GranularityBits;

    /// <summary>QEMU's Qcow2BitmapInfoFlags names of the flags ("in-use", "auto").</summary>
    public IEnumerable<string> FlagNames()
    {
        if (InUse)
            yield return "in-use";
        if (Auto)
            yield return "auto";
    }
}

/// <summary>
/// The bitmap directory with QEMU 7.2's constraints (qcow2-bitmap.c): parsed like bitmap_list_load (same refusals,
/// same messages) and serialised like bitmap_list_store.
/// </summary>
public static class BitmapDirectory
{
    public const int EntryHeaderSize = 24;
    public const uint MaxTableSize = 0x8000000;
    public const long MaxPhysSize = 0x20000000;
    public const int MaxNameSize = 1023;
    public const uint ReservedFlags = 0xfffffffc;
    public const ulong TableEntryReservedMask = 0xff000000000001feUL;
    public const ulong TableEntryOffsetMask = 0x00fffffffffffe00UL;
    public const ulong TableEntryAllOnes = 1;
    public const byte TypeDirtyTracking = 1;

    /// <summary>Bytes one entry takes (8-aligned).</summary>
    public static int EntrySize(int nameBytes, int extraBytes = 0) => (EntryHeaderSize + nameBytes + extraBytes + 7) & ~7;

    public static async ValueTask<List<BitmapDirectoryEntry>> ReadAsync(
        Storage.IStorage file, BitmapsExtension ext, int clusterSize, long diskSize, CancellationToken ct)
    {
        if (ext.DirectorySize == 0)
            throw new CorruptImageException("Requested bitmap directory size is zero");
        if (ext.DirectorySize > (ulong)MaxBitmapDirectorySize)
            throw new CorruptImageException("Requested bitmap directory size is too big");
        var raw = new byte[ext.DirectorySize];
        // Past the end of the file reads as zeroes, as QEMU's file driver pads short reads.
        if ((long)ext.DirectoryOffset < file.Length)
            await file.ReadAsync(raw.AsMemory(0, (int)Math.Min(raw.Length, file.Length - (long)ext.DirectoryOffset)), (long)ext.DirectoryOffset, ct).ConfigureAwait(false);
        try
        {
            return Parse(raw, ext.Count, clusterSize, diskSize);
        }
        catch (CorruptImageException e)
        {
            throw new CorruptImageException($"{e.Message} in '{file.Name}'");
        }
    }

    /// <summary>bitmap_list_load: every entry checked as QEMU does; a broken directory throws with QEMU's message.</summary>
    public static List<BitmapDirectoryEntry> Parse(ReadOnlySpan<byte> raw, uint count, int clusterSize, long diskSize)
    {
        var list = new List<BitmapDirectoryEntry>((int)Math.Min(count, 1024));
        int pos = 0;
        uint seen = 0;
        while (pos < raw.Length)
        {
            if (raw.Length - pos < EntryHeaderSize)
                throw new CorruptImageException("Broken bitmap directory");
            if (++seen > count)
                throw new CorruptImageException("More bitmaps found than specified in header extension");
            var e = raw[pos..];
            ulong tableOffset = BinaryPrimitives.ReadUInt64BigEndian(e);
            uint tableSize = BinaryPrimitives.ReadUInt32BigEndian(e[8..]);
            uint flags = BinaryPrimitives.ReadUInt32BigEndian(e[12..]);
            byte type = e[16];
            byte granularityBits = e[17];
            ushort nameSize = BinaryPrimitives.ReadUInt16BigEndian(e[18..]);
            uint extraSize = BinaryPrimitives.ReadUInt32BigEndian(e[20..]);
            long entryLen = (EntryHeaderSize + (long)nameSize + extraSize + 7) & ~7L;
            if (entryLen > raw.Length - pos)
                throw new CorruptImageException("Broken bitmap directory");
            if (extraSize != 0)
                throw new CorruptImageException("Bitmap extra data is not supported");
            string name = Encoding.UTF8.GetString(e.Slice(EntryHeaderSize, nameSize));
            if (!EntryValid(tableOffset, tableSize, flags, type, granularityBits, nameSize, clusterSize, diskSize))
                throw new CorruptImageException($"Bitmap '{name}' doesn't satisfy the constraints");
            list.Add(new BitmapDirectoryEntry((long)tableOffset, tableSize, flags, type, granularityBits, name, []));
            pos += (int)entryLen;
        }
        if (seen != count)
            throw new CorruptImageException("Less bitmaps found than specified in header extension");
        return list;
    }

    /// <summary>check_dir_entry.</summary>
    public static bool EntryValid(ulong tableOffset, uint tableSize, uint flags, byte type, byte granularityBits, int nameSize, int clusterSize, long diskSize)
    {
        bool fail = tableSize == 0 || tableOffset == 0 || tableOffset % (ulong)clusterSize != 0 ||
            tableSize > MaxTableSize || granularityBits > Bitmaps.DirtyBitmap.MaxGranularityBits ||
            granularityBits < Bitmaps.DirtyBitmap.MinGranularityBits || (flags & ReservedFlags) != 0 ||
            nameSize > MaxNameSize || type != TypeDirtyTracking;
        if (fail)
            return false;
        ulong phys = (ulong)tableSize * (ulong)clusterSize;
        if (phys > MaxPhysSize)
            return false;
        // A bitmap in use may be too small (not stored after a resize); a consistent one must cover the disk.
        return (flags & BitmapDirectoryEntry.FlagInUse) != 0 || (ulong)diskSize <= ((phys * 8) << granularityBits);
    }

    /// <summary>check_table_entry.</summary>
    public static bool TableEntryValid(ulong entry, int clusterSize)
    {
        if ((entry & TableEntryReservedMask) != 0)
            return false;
        ulong offset = entry & TableEntryOffsetMask;
        return offset == 0 || ((entry & TableEntryAllOnes) == 0 && offset % (ulong)clusterSize == 0);
    }

    /// <summary>bitmap_list_store's buffer: entries in order, names without terminator, no extra data.</summary>
    public static byte[] Serialize(IReadOnlyList<BitmapDirectoryEntry> entries)
    {
        long size = 0;
        foreach (var e in entries)
            size += EntrySize(Encoding.UTF8.GetByteCount(e.Name));
        if (size == 0 || size > MaxBitmapDirectorySize)
            throw new ImageException("Bitmap directory is too large");
        var buf = new byte[size];
        int pos = 0;
        foreach (var e in entries)
        {
            var s = buf.AsSpan(pos);
            int nameBytes = Encoding.UTF8.GetBytes(e.Name, s[EntryHeaderSize..]);
            BinaryPrimitives.WriteUInt64BigEndian(s, (ulong)e.TableOffset);
            BinaryPrimitives.WriteUInt32BigEndian(s[8..], e.TableSize);
            BinaryPrimitives.WriteUInt32BigEndian(s[12..], e.Flags);
            s[16] = TypeDirtyTracking;
            s[17] = e.GranularityBits;
            BinaryPrimitives.WriteUInt16BigEndian(s[18..], (ushort)nameBytes);
            pos += EntrySize(nameBytes);
        }
        return buf;
    }
}
