using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

public static partial class Qcow2Check
{
    private sealed partial class Run
    {
        /// <summary>
        /// qcow2_check_bitmaps_refcounts: counts the bitmap directory, every bitmap table and every data cluster.
        /// A directory or table that breaks QEMU's constraints or cannot be read is a corruption that ends the check.
        /// </summary>
        private async ValueTask CheckBitmapsAsync(CancellationToken ct)
        {
            var ext = _h.Bitmaps;
            if (ext == null || ext.Count == 0)
                return;
            long dirOffset = (long)ext.DirectoryOffset, dirSize = (long)ext.DirectorySize;
            Inc(dirOffset, dirSize, 1);

            var bitmaps = await LoadBitmapListAsync(ext, ct).ConfigureAwait(false);
            if (bitmaps == null)
            {
                _res.Corruptions++;
                throw new CheckFailedException(EINVAL);
            }
            foreach (var bitmap in bitmaps)
            {
                long tableOffset = bitmap.TableOffset;
                uint tableSize = bitmap.TableSize;
                Inc(tableOffset, tableSize * 8L, 1);
                ulong[] entries;
                try
                {
                    entries = await PersistentBitmaps.LoadTableAsync(_file, tableOffset, tableSize, _cs, ct).ConfigureAwait(false);
                }
                catch (CorruptImageException x)
                {
                    _res.Corruptions++;
                    throw new CheckFailedException(x.Message);
                }
                foreach (ulong e in entries)
                {
                    long offset = (long)(e & BitmapDirectory.TableEntryOffsetMask);
                    if (offset != 0)
                        Inc(offset, _cs, 1);
                }
            }
        }

        /// <summary>bitmap_list_load: the bitmap directory, or null when QEMU would refuse to load it.</summary>
        private async ValueTask<List<BitmapDirectoryEntry>?> LoadBitmapListAsync(BitmapsExtension ext, CancellationToken ct)
        {
            try
            {
                return await BitmapDirectory.ReadAsync(_file, ext, _cs, _h.Size, ct).ConfigureAwait(false);
            }
            catch (CorruptImageException)
            {
                return null;
            }
        }
    }
}
