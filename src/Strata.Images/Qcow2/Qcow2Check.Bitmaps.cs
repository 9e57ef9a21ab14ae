using System.Buffers.Binary;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

public static partial class Qcow2Check
{
    private sealed partial class Run
    {
        // Bitmap directory constraints of QEMU 7.2 (qcow2-bitmap.c).
        private const uint BmeMaxTableSize = 0x8000000;
        private const ulong BmeMaxPhysSize = 0x20000000;
        private const int BmeMaxGranularityBits = 31;
        private const int BmeMinGranularityBits = 9;
        private const int BmeMaxNameSize = 1023;
        private const uint BmeReservedFlags = 0xfffffffc;
        private const ulong BmeTableEntryReservedMask = 0xff000000000001feUL;
        private const ulong BmeTableEntryOffsetMask = 0x00fffffffffffe00UL;
        private const ulong BmeTableEntryAllOnes = 1;
        private const int BmeDirEntrySize = 24;

        /// <summary>
        /// qcow2_check_bitmaps_refcounts: counts the bitmap directory, every bitmap table and every data cluster.
        /// A directory or table that breaks QEMU's constraints is a corruption that ends the check (-EINVAL).
        /// </summary>
        private async ValueTask CheckBitmapsAsync(CancellationToken ct)
        {
            var ext = _h.Bitmaps;
            if (ext == null || ext.Count == 0)
                return;
            long dirOffset = (long)ext.DirectoryOffset, dirSize = (long)ext.DirectorySize;
            Inc(dirOffset, dirSize, 1);

            var tables = await LoadBitmapListAsync(ext, ct).ConfigureAwait(false);
            if (tables == null)
            {
                _res.Corruptions++;
                throw new CheckFailedException(EINVAL);
            }
            foreach (var (tableOffset, tableSize) in tables)
            {
                Inc(tableOffset, tableSize * 8L, 1);
                var raw = new byte[tableSize * 8L];
                if (tableOffset >= 0 && tableOffset < _file.Length)
                    await _file.ReadAsync(raw, tableOffset, ct).ConfigureAwait(false);
                var entries = new ulong[tableSize];
                for (int i = 0; i < entries.Length; i++)
                {
                    entries[i] = BinaryPrimitives.ReadUInt64BigEndian(raw.AsSpan(i * 8));
                    if (!BitmapTableEntryValid(entries[i]))
                    {
                        _res.Corruptions++;
                        throw new CheckFailedException(EINVAL);
                    }
                }
                foreach (ulong e in entries)
                {
                    long offset = (long)(e & BmeTableEntryOffsetMask);
                    if (offset != 0)
                        Inc(offset, _cs, 1);
                }
            }
        }

        private bool BitmapTableEntryValid(ulong entry)
        {
            if ((entry & BmeTableEntryReservedMask) != 0)
                return false;
            ulong offset = entry & BmeTableEntryOffsetMask;
            if (offset != 0 && ((entry & BmeTableEntryAllOnes) != 0 || offset % (ulong)_cs != 0))
                return false;
            return true;
        }

        /// <summary>bitmap_list_load: the (table offset, table size) of every bitmap, or null when the directory is invalid.</summary>
        private async ValueTask<List<(long Offset, uint Size)>?> LoadBitmapListAsync(BitmapsExtension ext, CancellationToken ct)
        {
            ulong size = ext.DirectorySize;
            if (size == 0 || size > MaxBitmapDirectorySize)
                return null;
            var dir = new byte[size];
            if ((long)ext.DirectoryOffset < _file.Length)
                await _file.ReadAsync(dir, (long)ext.DirectoryOffset, ct).ConfigureAwait(false);
            var list = new List<(long, uint)>();
            int pos = 0;
            uint count = 0;
            while (pos < dir.Length)
            {
                if (pos + BmeDirEntrySize > dir.Length)
                    return null; // broken directory
                if (++count > ext.Count)
                    return null; // more bitmaps than the header says
                var e = dir.AsSpan(pos);
                ulong tableOffset = BinaryPrimitives.ReadUInt64BigEndian(e);
                uint tableSize = BinaryPrimitives.ReadUInt32BigEndian(e[8..]);
                uint flags = BinaryPrimitives.ReadUInt32BigEndian(e[12..]);
                byte type = e[16];
                byte granularityBits = e[17];
                ushort nameSize = BinaryPrimitives.ReadUInt16BigEndian(e[18..]);
                uint extraSize = BinaryPrimitives.ReadUInt32BigEndian(e[20..]);
                long entrySize = (BmeDirEntrySize + (long)nameSize + extraSize + 7) & ~7L;
                if (pos + entrySize > dir.Length)
                    return null;
                if (extraSize != 0)
                    return null; // bitmap extra data is not supported
                bool bad = tableSize == 0 || tableOffset == 0 || tableOffset % (ulong)_cs != 0 ||
                    tableSize > BmeMaxTableSize || granularityBits > BmeMaxGranularityBits ||
                    granularityBits < BmeMinGranularityBits || (flags & BmeReservedFlags) != 0 ||
                    nameSize > BmeMaxNameSize || type != 1;
                if (bad)
                    return null;
                ulong physBytes = (ulong)tableSize * (ulong)_cs;
                if (physBytes > BmeMaxPhysSize || (ulong)_h.Size > ((physBytes * 8) << granularityBits))
                    return null;
                list.Add(((long)tableOffset, tableSize));
                pos += (int)entrySize;
            }
            return count == ext.Count ? list : null;
        }
    }
}
