using System.Text.Json;
using Strata.Block;
using Strata.Block.Drivers;
using Strata.Block.Snapshots;
using Strata.Images.Format;
using Strata.Images.Qcow2;

namespace Strata.Qmp.Server.Commands;

/// <summary>
/// The query views of the node graph, shaped as qemu-storage-daemon 7.2 shapes them (block/qapi.c): BlockDeviceInfo,
/// ImageInfo, BlockStats, and the order in which QEMU lists nodes.
/// </summary>
internal static class NodeInfo
{
    /// <summary>
    /// Nodes in the order QEMU names them (its graph_bdrv_states list): a format node is named after its file child and
    /// before its backing chain, which QEMU opens once the node itself is open.
    /// </summary>
    public static List<BlockNode> InNamingOrder(BlockGraph graph) => graph.Nodes.OrderBy(n => n.NamingOrder).ToList();

    /// <param name="directories">Each qcow2 node's bitmap directory as on disk (ImageInfoSpecificQCow2's "bitmaps").</param>
    public static BlockDeviceInfo DeviceInfo(BlockGraph graph, BlockNode node, bool flat,
        IReadOnlyDictionary<BlockNode, IReadOnlyList<BitmapDirectoryEntry>>? directories = null)
    {
        var image = Image(graph, node, flat, directories);
        int depth = 0;
        for (var i = image.BackingImage; i is not null; i = i.BackingImage)
        {
            depth++;
        }

        return new BlockDeviceInfo
        {
            File = NodeFilename.Of(node, graph),
            NodeName = node.NodeName,
            ReadOnly = node.IsReadOnly,
            Driver = node.Driver,
            // QEMU replaces the header's name by the backing node's file name once the backing is attached.
            // QEMU's backing_file is the backing node's name once attached; with backing: null there is none.
            BackingFile = node.BackingChild is { } backing ? NodeFilename.Of(backing, graph) : null,
            BackingFileDepth = depth,
            Encrypted = false,
            DetectZeroes = node.Settings.DetectZeroes switch
            {
                DetectZeroes.On => BlockdevDetectZeroesOptions.On,
                DetectZeroes.Unmap => BlockdevDetectZeroesOptions.Unmap,
                _ => BlockdevDetectZeroesOptions.Off,
            },
            Image = image,
            Cache = new BlockdevCacheInfo { Writeback = true, Direct = node.Settings.Direct, NoFlush = node.Settings.NoFlush },
            WriteThreshold = 0,
            DirtyBitmaps = DirtyBitmaps(graph, node),
        };
    }

    /// <summary>
    /// bdrv_query_dirty_bitmaps: the node's bitmaps newest first, no member when there are none. A backup's anonymous
    /// bitmaps are listed too: block-copy's copy bitmap on the filter's file child, the filter's own two on the filter
    /// (all made when the job started, so newer than the node's named ones).
    /// </summary>
    private static List<BlockDirtyInfo>? DirtyBitmaps(BlockGraph graph, BlockNode node)
    {
        var list = new List<BlockDirtyInfo>();
        if (node is CopyBeforeWriteNode self)
        {
            list.Add(Internal(self.Access));
            lock (self.Done)
                list.Add(Internal(self.Done));
        }
        foreach (var cbw in graph.Nodes.OfType<CopyBeforeWriteNode>())
            if (ReferenceEquals(cbw.FileChild, node))
                list.Add(Internal(cbw.Copy.CopyBitmap));
        list.AddRange(node.DirtyBitmaps.All.Select(b => new BlockDirtyInfo
        {
            Name = b.Name,
            Count = b.DirtyBytes,
            Granularity = b.Granularity,
            Recording = b.Enabled,
            Busy = b.Busy,
            Persistent = b.Persistent,
            Inconsistent = b.Inconsistent ? true : null,
        }));
        return list.Count == 0 ? null : list;
    }

    private static BlockDirtyInfo Internal(Strata.Images.Bitmaps.DirtyBitmap b) => new()
    {
        Count = b.DirtyBytes,
        Granularity = b.Granularity,
        Recording = false,
        Busy = false,
        Persistent = false,
    };

    /// <summary>ImageInfo (bdrv_query_image_info): with the backing chain's images unless <paramref name="flat"/>.</summary>
    public static ImageInfo Image(BlockGraph graph, BlockNode node, bool flat,
        IReadOnlyDictionary<BlockNode, IReadOnlyList<BitmapDirectoryEntry>>? directories = null)
    {
        long actual = node.Storage.AllocatedBytes;
        var info = new ImageInfo
        {
            Filename = NodeFilename.Of(node, graph),
            Format = node.Driver,
            VirtualSize = BlockNode.WholeSectors(node.Size),
            ActualSize = actual >= 0 ? actual : null,
            // Drivers with bdrv_get_info (file, raw over it, qcow2) report a dirty flag; null-co does not.
            DirtyFlag = node.Driver == "null-co" ? null : false,
        };
        if (node is Qcow2Node q)
        {
            var h = q.Image.Header;
            string? backing = h.BackingFileName;
            info = info with
            {
                DirtyFlag = h.IsDirty,
                ClusterSize = h.ClusterSize,
                BackingFilename = backing,
                FullBackingFilename = backing is null ? null
                    : backing.StartsWith("json:", StringComparison.Ordinal) ? backing // QEMU takes a json: name as it is
                    : BackingPath.Resolve(node.FileName, backing),
                BackingFilenameFormat = backing is null ? null : h.BackingFormat,
                FormatSpecific = ImageInfoSpecific.Qcow2(h.Version == 2
                    ? new ImageInfoSpecificQCow2 { Compat = "0.10", RefcountBits = h.RefcountBits, CompressionType = Compression(h) }
                    : new ImageInfoSpecificQCow2
                    {
                        Compat = "1.1",
                        LazyRefcounts = h.LazyRefcounts,
                        Corrupt = h.IsCorrupt,
                        ExtendedL2 = h.ExtendedL2,
                        RefcountBits = h.RefcountBits,
                        CompressionType = Compression(h),
                        Bitmaps = StoredBitmaps(directories, node),
                    }),
                Snapshots = Snapshots(q.Image.LoadedSnapshots),
                BackingImage = !flat && node.BackingChild is { } b ? Image(graph, b, flat, directories) : null,
            };
        }

        if (node is CopyBeforeWriteNode { FileChild: { } filtered })
        {
            // bdrv_get_info of a filter asks its filtered child; outside flat output the child's image follows as the
            // filter's "backing-image" (bdrv_block_device_info walks filtered children as well as backing files).
            var inner = Image(graph, filtered, flat, directories);
            info = info with
            {
                ClusterSize = inner.ClusterSize,
                DirtyFlag = inner.DirtyFlag,
                BackingImage = flat ? null : inner,
            };
        }

        return info;
    }

    /// <summary>qcow2_get_bitmap_info_list: the directory on disk, in its order; no member when it is empty.</summary>
    private static List<Qcow2BitmapInfo>? StoredBitmaps(IReadOnlyDictionary<BlockNode, IReadOnlyList<BitmapDirectoryEntry>>? directories, BlockNode node)
    {
        if (directories is null || !directories.TryGetValue(node, out var dir) || dir.Count == 0)
            return null;
        return dir.Select(e =>
        {
            var flags = e.FlagNames().ToList();
            if ((e.Flags & ~(BitmapDirectoryEntry.FlagInUse | BitmapDirectoryEntry.FlagAuto)) != 0)
                flags.Add("unknown");
            return new Qcow2BitmapInfo { Name = e.Name, Granularity = e.Granularity, Flags = flags };
        }).ToList();
    }

    /// <summary>bdrv_query_snapshot_info_list: no member at all when the table is empty.</summary>
    private static List<SnapshotInfo>? Snapshots(IReadOnlyList<Strata.Images.Qcow2.Qcow2Snapshot>? table) =>
        table is not { Count: > 0 } ? null : table.Select(sn => new SnapshotInfo
        {
            Id = sn.Id,
            Name = sn.Name,
            VmStateSize = (long)sn.VmStateSize,
            DateSec = sn.DateSeconds,
            DateNsec = sn.DateNanoseconds,
            VmClockSec = (long)(sn.VmClockNanoseconds / 1_000_000_000),
            VmClockNsec = (long)(sn.VmClockNanoseconds % 1_000_000_000),
            Icount = sn.Icount == ulong.MaxValue ? null : (long)sn.Icount,
        }).ToList();

    private static Qcow2CompressionType Compression(Strata.Images.Qcow2.Qcow2Header h) =>
        h.CompressionType == Strata.Images.Qcow2.CompressionType.Zstd ? Qcow2CompressionType.Zstd : Qcow2CompressionType.Zlib;

    /// <summary>Node-level BlockStats (bdrv_query_bds_stats without a backend): counters are the block backends' business.</summary>
    public static BlockStats Stats(BlockNode node)
    {
        BlockStatsSpecific? specific = null;
        if (node.Driver == "file")
        {
            specific = new BlockStatsSpecific
            {
                Driver = "file",
                Members = new Dictionary<string, JsonElement>
                {
                    ["discard-nb-ok"] = Zero,
                    ["discard-nb-failed"] = Zero,
                    ["discard-bytes-ok"] = Zero,
                },
            };
        }

        return new BlockStats
        {
            NodeName = node.NodeName,
            Stats = new BlockDeviceStats(),
            DriverSpecific = specific,
            Parent = node.FileChild is { } f ? Stats(f) : null,
        };
    }

    private static readonly JsonElement Zero = ParseZero();

    private static JsonElement ParseZero()
    {
        using var doc = JsonDocument.Parse("0");
        return doc.RootElement.Clone();
    }
}
