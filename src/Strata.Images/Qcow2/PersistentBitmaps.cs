using System.Buffers.Binary;
using Strata.Images.Bitmaps;
using Strata.Images.Storage;

namespace Strata.Images.Qcow2;

/// <summary>
/// Bitmap tables and data clusters on disk (qcow2-bitmap.c): reading a bitmap into a <see cref="DirtyBitmap"/>
/// and QEMU's constraints on bitmaps that are to be stored.
/// </summary>
internal static class PersistentBitmaps
{
    /// <summary>A directory entry being rebuilt for a store (mutable, unlike <see cref="BitmapDirectoryEntry"/>).</summary>
    internal sealed class Slot(BitmapDirectoryEntry e)
    {
        public long TableOffset = e.TableOffset;
        public uint TableSize = e.TableSize;
        public uint Flags = e.Flags;
        public byte GranularityBits = e.GranularityBits;
        public string Name = e.Name;
        public DirtyBitmap? Bitmap;

        public BitmapDirectoryEntry ToEntry() =>
            new(TableOffset, TableSize, Flags, BitmapDirectory.TypeDirtyTracking, GranularityBits, Name, []);
    }

    /// <summary>QEMU's BDRV_MAX_LENGTH: a read reaching past it fails with EIO instead of reading zeros past the end.</summary>
    private const long MaxReadableOffset = long.MaxValue / 2147483136 * 2147483136;

    /// <summary>
    /// bitmap_table_load: the table entries, each checked. Failures are <see cref="CorruptImageException"/>s whose
    /// message is the errno text QEMU reports ("Input/output error" for an unreadable place, "Invalid argument" for a bad entry).
    /// </summary>
    public static async ValueTask<ulong[]> LoadTableAsync(IStorage file, long offset, uint size, int clusterSize, CancellationToken ct)
    {
        // The directory parser accepts any cluster-aligned 64-bit offset, as QEMU's does; the read is what fails.
        if (offset < 0 || offset > MaxReadableOffset - size * 8L)
            throw new CorruptImageException("Input/output error");
        var raw = new byte[size * 8L];
        if (offset < file.Length)
            await file.ReadAsync(raw.AsMemory(0, (int)Math.Min(raw.Length, file.Length - offset)), offset, ct).ConfigureAwait(false);
        var table = new ulong[size];
        for (int i = 0; i < table.Length; i++)
        {
            table[i] = BinaryPrimitives.ReadUInt64BigEndian(raw.AsSpan(i * 8));
            if (!BitmapDirectory.TableEntryValid(table[i], clusterSize))
                throw new CorruptImageException("Invalid argument");
        }
        return table;
    }

    /// <summary>load_bitmap: reads a consistent bitmap's table and data into <paramref name="bitmap"/> (clean on entry).</summary>
    public static async ValueTask LoadDataAsync(IStorage file, BitmapDirectoryEntry e, DirtyBitmap bitmap, int clusterSize, CancellationToken ct)
    {
        ulong[] table;
        try
        {
            table = await LoadTableAsync(file, e.TableOffset, e.TableSize, clusterSize, ct).ConfigureAwait(false);
        }
        catch (CorruptImageException x)
        {
            throw new CorruptImageException($"Could not read bitmap_table table from image for bitmap '{e.Name}': {x.Message} in '{file.Name}'");
        }
        long size = bitmap.Size;
        long tabSize = (bitmap.SerializationSize(0, size) + clusterSize - 1) / clusterSize;
        if (tabSize != e.TableSize || tabSize > BitmapDirectory.MaxTableSize)
            throw new CorruptImageException($"Could not read bitmap '{e.Name}' from image: Invalid argument in '{file.Name}'");
        long limit = bitmap.SerializationCoverage(clusterSize);
        var buf = new byte[clusterSize];
        long offset = 0;
        for (int i = 0; i < tabSize; i++, offset += limit)
        {
            long count = Math.Min(size - offset, limit);
            ulong entry = table[i];
            long dataOffset = (long)(entry & BitmapDirectory.TableEntryOffsetMask);
            if (dataOffset == 0)
            {
                if ((entry & BitmapDirectory.TableEntryAllOnes) != 0)
                    bitmap.SetRange(offset, count);
                continue;
            }
            Array.Clear(buf);
            if (dataOffset < file.Length)
                await file.ReadAsync(buf.AsMemory(0, (int)Math.Min(clusterSize, file.Length - dataOffset)), dataOffset, ct).ConfigureAwait(false);
            bitmap.DeserializePart(buf, offset, count);
        }
    }

    /// <summary>check_constraints_on_bitmap, with QEMU's messages.</summary>
    public static void CheckConstraints(string name, uint granularity, long diskSize, int clusterSize)
    {
        int bits = System.Numerics.BitOperations.TrailingZeroCount(granularity);
        if (bits > DirtyBitmap.MaxGranularityBits)
            throw new BitmapException($"Granularity exceeds maximum ({1UL << DirtyBitmap.MaxGranularityBits} bytes)");
        if (bits < DirtyBitmap.MinGranularityBits)
            throw new BitmapException($"Granularity is under minimum ({1UL << DirtyBitmap.MinGranularityBits} bytes)");
        long bitmapBytes = ((diskSize + granularity - 1) / granularity + 7) / 8;
        if (bitmapBytes > BitmapDirectory.MaxPhysSize || bitmapBytes > (long)BitmapDirectory.MaxTableSize * clusterSize)
            throw new BitmapException("Too much space will be occupied by the bitmap. Use larger granularity");
        if (System.Text.Encoding.UTF8.GetByteCount(name) > BitmapDirectory.MaxNameSize)
            throw new BitmapException($"Name length exceeds maximum ({BitmapDirectory.MaxNameSize} characters)");
    }

    /// <summary>qcow2_get_persistent_dirty_bitmap_size: the room the given bitmaps take in an image of the cluster size.</summary>
    public static long StoredSize(IEnumerable<DirtyBitmap> bitmaps, int clusterSize)
    {
        long total = 0, dir = 0;
        foreach (var b in bitmaps)
        {
            if (!b.Persistent)
                continue;
            long bytes = (b.BitCount + 7) / 8;
            long clusters = (bytes + clusterSize - 1) / clusterSize;
            total += clusters * clusterSize;
            total += (clusters * 8 + clusterSize - 1) / clusterSize * clusterSize;
            dir += BitmapDirectory.EntrySize(System.Text.Encoding.UTF8.GetByteCount(b.Name ?? ""));
        }
        return total + (dir + clusterSize - 1) / clusterSize * clusterSize;
    }
}
