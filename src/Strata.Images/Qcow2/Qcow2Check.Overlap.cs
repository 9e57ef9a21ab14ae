using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

public static partial class Qcow2Check
{
    /// <summary>Metadata sections of QEMU's overlap check (QCOW2_OL_*), as the "cached" template checks them.</summary>
    [Flags]
    private enum Meta
    {
        None = 0,
        MainHeader = 1 << 0,
        ActiveL1 = 1 << 1,
        ActiveL2 = 1 << 2,
        RefcountTable = 1 << 3,
        RefcountBlock = 1 << 4,
        SnapshotTable = 1 << 5,
        InactiveL1 = 1 << 6,
        BitmapDirectory = 1 << 8,
    }

    private static string MetaName(Meta m) => m switch
    {
        Meta.MainHeader => "qcow2_header",
        Meta.ActiveL1 => "active L1 table",
        Meta.ActiveL2 => "active L2 table",
        Meta.RefcountTable => "refcount table",
        Meta.RefcountBlock => "refcount block",
        Meta.SnapshotTable => "snapshot table",
        Meta.InactiveL1 => "inactive L1 table",
        _ => "bitmap directory",
    };

    /// <summary>
    /// The byte ranges of the image's metadata as QEMU knows them in memory, sorted for lookups, with the order
    /// in which qcow2_check_metadata_overlap tests the sections (the first section hit is the one reported).
    /// </summary>
    private sealed class OverlapIndex
    {
        private readonly (long Start, long End, int Rank, Meta Kind)[] _ranges;
        private readonly long[] _maxEnd;

        public OverlapIndex(List<(long Start, long End, int Rank, Meta Kind)> ranges)
        {
            ranges.Sort((a, b) => a.Start.CompareTo(b.Start));
            _ranges = [.. ranges];
            _maxEnd = new long[_ranges.Length];
            long max = long.MinValue;
            for (int i = 0; i < _ranges.Length; i++)
                _maxEnd[i] = max = Math.Max(max, _ranges[i].End);
        }

        /// <summary>The first section (in QEMU's order) other than <paramref name="ignore"/> that [start, end) overlaps.</summary>
        public Meta Find(long start, long end, Meta ignore)
        {
            int lo = 0, hi = _ranges.Length; // first range starting at or after end
            while (lo < hi)
            {
                int mid = (lo + hi) >>> 1;
                if (_ranges[mid].Start < end)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            var best = (Rank: int.MaxValue, Kind: Meta.None);
            for (int i = lo - 1; i >= 0 && _maxEnd[i] > start; i--)
            {
                var r = _ranges[i];
                if (r.End > start && (r.Kind & ignore) == 0 && r.Rank < best.Rank)
                    best = (r.Rank, r.Kind);
            }
            return best.Kind;
        }
    }

    private sealed partial class Run
    {
        private OverlapIndex? _overlap;

        private OverlapIndex BuildOverlapIndex()
        {
            var list = new List<(long, long, int, Meta)>();
            void Add(ulong offset, ulong size, int rank, Meta kind)
            {
                if (size == 0 || offset > (ulong)long.MaxValue)
                    return;
                ulong end = offset + size;
                list.Add(((long)offset, end < offset || end > long.MaxValue ? long.MaxValue : (long)end, rank, kind));
            }
            // Ranks follow qcow2_check_metadata_overlap's order of tests.
            Add((ulong)_h.L1TableOffset, (ulong)_h.L1Size * 8, 1, Meta.ActiveL1);
            Add((ulong)_h.RefcountTableOffset, (ulong)_stored.Table.Length * 8, 2, Meta.RefcountTable);
            Add((ulong)_snapshotsOffset, (ulong)_snapshotsSize, 3, Meta.SnapshotTable);
            foreach (var sn in _snapshots)
                Add(sn.L1TableOffset, (ulong)sn.L1Size * 8, 4, Meta.InactiveL1);
            foreach (ulong e in _img.ActiveL1ForCheck)
                Add(e & L1OffsetMask, (e & L1OffsetMask) == 0 ? 0 : (ulong)_cs, 5, Meta.ActiveL2);
            foreach (ulong e in _stored.Table)
                Add(e & RefTableOffsetMask, (e & RefTableOffsetMask) == 0 ? 0 : (ulong)_cs, 6, Meta.RefcountBlock);
            if ((_h.AutoclearFeatures & AutoclearBitmaps) != 0 && _h.Bitmaps is { } bm)
                Add(bm.DirectoryOffset, bm.DirectorySize, 8, Meta.BitmapDirectory);
            return new OverlapIndex(list);
        }

        /// <summary>Forgets the metadata ranges after the metadata moved (L1 entries, refcount table).</summary>
        private void MetadataChanged() => _overlap = null;

        /// <summary>
        /// qcow2_pre_write_overlap_check: false (after marking the image corrupt, as QEMU does) when a write of
        /// [offset, offset+size) would hit metadata other than <paramref name="ignore"/>.
        /// </summary>
        private async ValueTask<bool> PreWriteOverlapCheckAsync(Meta ignore, long offset, long size, CancellationToken ct)
        {
            if (size <= 0)
                return true;
            Meta hit;
            if ((ignore & Meta.MainHeader) == 0 && offset < _cs)
            {
                hit = Meta.MainHeader;
            }
            else
            {
                long start = offset & ~((long)_cs - 1);
                long end = start + (((offset & (_cs - 1)) + size + _cs - 1) & ~((long)_cs - 1));
                _overlap ??= BuildOverlapIndex();
                hit = _overlap.Find(start, end, ignore);
            }
            if (hit == Meta.None)
                return true;
            await SignalCorruptionAsync($"Preventing invalid write on metadata (overlaps with {MetaName(hit)})", ct).ConfigureAwait(false);
            return false;
        }
    }
}
