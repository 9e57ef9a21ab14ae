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
}

/// <summary>The bitmap directory: parsed with QEMU's limits, rewritten in place when only flags change.</summary>
public static class BitmapDirectory
{
    private const int EntryHeaderSize = 24;

    public static async ValueTask<(List<BitmapDirectoryEntry> Entries, byte[] Raw)> ReadAsync(
        Storage.IStorage file, BitmapsExtension ext, int clusterSize, CancellationToken ct)
    {
        // The header check bounded the size (64 MiB) and the offset.
        var raw = new byte[ext.DirectorySize];
        await file.ReadAsync(raw, (long)ext.DirectoryOffset, ct).ConfigureAwait(false);
        return (Parse(raw, ext.Count, clusterSize, file.Name), raw);
    }

    public static List<BitmapDirectoryEntry> Parse(ReadOnlySpan<byte> raw, uint count, int clusterSize, string fileName)
    {
        var list = new List<BitmapDirectoryEntry>((int)Math.Min(count, 1024));
        int pos = 0;
        for (uint i = 0; i < count; i++)
        {
            if (raw.Length - pos < EntryHeaderSize)
                throw new CorruptImageException($"Bitmap directory of '{fileName}' is truncated at entry {i}");
            var e = raw[pos..];
            ulong tableOffset = BinaryPrimitives.ReadUInt64BigEndian(e);
            uint tableSize = BinaryPrimitives.ReadUInt32BigEndian(e[8..]);
            uint flags = BinaryPrimitives.ReadUInt32BigEndian(e[12..]);
            byte type = e[16];
            byte granularity = e[17];
            ushort nameSize = BinaryPrimitives.ReadUInt16BigEndian(e[18..]);
            uint extraSize = BinaryPrimitives.ReadUInt32BigEndian(e[20..]);
            long entryLen = EntryHeaderSize + (long)extraSize + nameSize;
            if (extraSize > MaxBitmapDirectorySize || entryLen > raw.Length - pos)
                throw new CorruptImageException($"Bitmap directory entry {i} of '{fileName}' runs past the end of the directory");
            if (nameSize == 0 || nameSize > 1023)
                throw new CorruptImageException($"Bitmap directory entry {i} of '{fileName}' has an invalid name length {nameSize}");
            if ((tableOffset & (ulong)(clusterSize - 1)) != 0)
                throw new CorruptImageException($"Bitmap table offset 0x{tableOffset:x} is not cluster aligned in '{fileName}'");
            if (granularity is < 9 or > 31)
                throw new CorruptImageException($"Bitmap '{i}' of '{fileName}' has an invalid granularity 2^{granularity}");
            var extra = e.Slice(EntryHeaderSize, (int)extraSize).ToArray();
            string name = Encoding.UTF8.GetString(e.Slice(EntryHeaderSize + (int)extraSize, nameSize));
            list.Add(new BitmapDirectoryEntry((long)tableOffset, tableSize, flags, type, granularity, name, extra));
            pos += (int)((entryLen + 7) & ~7L);
        }
        return list;
    }

    /// <summary>
    /// Sets the in-use flag of every bitmap in place: the image is about to be written by a program that does not
    /// (yet) track these bitmaps, so they must read as inconsistent afterwards, as QEMU marks them while it has
    /// them open.
    /// </summary>
    public static async ValueTask MarkAllInUseAsync(Storage.IStorage file, BitmapsExtension ext, int clusterSize, CancellationToken ct)
    {
        var (entries, raw) = await ReadAsync(file, ext, clusterSize, ct).ConfigureAwait(false);
        int pos = 0;
        bool changed = false;
        foreach (var e in entries)
        {
            uint flags = BinaryPrimitives.ReadUInt32BigEndian(raw.AsSpan(pos + 12));
            if ((flags & BitmapDirectoryEntry.FlagInUse) == 0)
            {
                BinaryPrimitives.WriteUInt32BigEndian(raw.AsSpan(pos + 12), flags | BitmapDirectoryEntry.FlagInUse);
                changed = true;
            }
            long len = EntryHeaderSize + e.ExtraData.Length + Encoding.UTF8.GetByteCount(e.Name);
            pos += (int)((len + 7) & ~7L);
        }
        if (!changed)
            return;
        await file.WriteAsync(raw, (long)ext.DirectoryOffset, ct).ConfigureAwait(false);
        await file.FlushAsync(ct).ConfigureAwait(false);
    }
}
