using System.Text.Json;
using System.Text.Json.Serialization;

namespace Strata.Qmp;

// qapi/block-core.json, qapi/block.json: query-named-block-nodes (BlockDeviceInfo), query-block (BlockInfo).
// Members are declared in the schema's order: QEMU inserts them in that order, which decides
// its printing order where two keys share a hash bucket.

/// <summary>Arguments of query-named-block-nodes.</summary>
public sealed record QueryNamedBlockNodesArgs
{
    /// <summary>Omit the nested image information of backing images.</summary>
    [JsonPropertyName("flat")] public bool? Flat { get; init; }
}

/// <summary>A block node (BlockDeviceInfo).</summary>
public sealed record BlockDeviceInfo
{
    [JsonPropertyName("file")] public string File { get; init; } = "";

    [JsonPropertyName("node-name")] public string? NodeName { get; init; }

    [JsonPropertyName("ro")] public bool ReadOnly { get; init; }

    [JsonPropertyName("drv")] public string Driver { get; init; } = "";

    [JsonPropertyName("backing_file")] public string? BackingFile { get; init; }

    [JsonPropertyName("backing_file_depth")] public long BackingFileDepth { get; init; }

    [JsonPropertyName("encrypted")] public bool Encrypted { get; init; }

    [JsonPropertyName("detect_zeroes")] public BlockdevDetectZeroesOptions DetectZeroes { get; init; }

    [JsonPropertyName("bps")] public long Bps { get; init; }

    [JsonPropertyName("bps_rd")] public long BpsRd { get; init; }

    [JsonPropertyName("bps_wr")] public long BpsWr { get; init; }

    [JsonPropertyName("iops")] public long Iops { get; init; }

    [JsonPropertyName("iops_rd")] public long IopsRd { get; init; }

    [JsonPropertyName("iops_wr")] public long IopsWr { get; init; }

    [JsonPropertyName("image")] public ImageInfo Image { get; init; } = new();

    [JsonPropertyName("bps_max")] public long? BpsMax { get; init; }

    [JsonPropertyName("bps_rd_max")] public long? BpsRdMax { get; init; }

    [JsonPropertyName("bps_wr_max")] public long? BpsWrMax { get; init; }

    [JsonPropertyName("iops_max")] public long? IopsMax { get; init; }

    [JsonPropertyName("iops_rd_max")] public long? IopsRdMax { get; init; }

    [JsonPropertyName("iops_wr_max")] public long? IopsWrMax { get; init; }

    [JsonPropertyName("bps_max_length")] public long? BpsMaxLength { get; init; }

    [JsonPropertyName("bps_rd_max_length")] public long? BpsRdMaxLength { get; init; }

    [JsonPropertyName("bps_wr_max_length")] public long? BpsWrMaxLength { get; init; }

    [JsonPropertyName("iops_max_length")] public long? IopsMaxLength { get; init; }

    [JsonPropertyName("iops_rd_max_length")] public long? IopsRdMaxLength { get; init; }

    [JsonPropertyName("iops_wr_max_length")] public long? IopsWrMaxLength { get; init; }

    [JsonPropertyName("iops_size")] public long? IopsSize { get; init; }

    [JsonPropertyName("group")] public string? Group { get; init; }

    [JsonPropertyName("cache")] public BlockdevCacheInfo Cache { get; init; } = new();

    [JsonPropertyName("write_threshold")] public long WriteThreshold { get; init; }

    [JsonPropertyName("dirty-bitmaps")] public IReadOnlyList<BlockDirtyInfo>? DirtyBitmaps { get; init; }
}

/// <summary>BlockdevCacheInfo.</summary>
public sealed record BlockdevCacheInfo
{
    [JsonPropertyName("writeback")] public bool Writeback { get; init; }

    [JsonPropertyName("direct")] public bool Direct { get; init; }

    [JsonPropertyName("no-flush")] public bool NoFlush { get; init; }
}

/// <summary>A dirty bitmap of a node (BlockDirtyInfo).</summary>
public sealed record BlockDirtyInfo
{
    [JsonPropertyName("name")] public string? Name { get; init; }

    [JsonPropertyName("count")] public long Count { get; init; }

    [JsonPropertyName("granularity")] public long Granularity { get; init; }

    [JsonPropertyName("recording")] public bool Recording { get; init; }

    [JsonPropertyName("busy")] public bool Busy { get; init; }

    [JsonPropertyName("persistent")] public bool Persistent { get; init; }

    [JsonPropertyName("inconsistent")] public bool? Inconsistent { get; init; }
}

/// <summary>An image (ImageInfo).</summary>
public sealed record ImageInfo
{
    [JsonPropertyName("filename")] public string Filename { get; init; } = "";

    [JsonPropertyName("format")] public string Format { get; init; } = "";

    [JsonPropertyName("dirty-flag")] public bool? DirtyFlag { get; init; }

    [JsonPropertyName("actual-size")] public long? ActualSize { get; init; }

    [JsonPropertyName("virtual-size")] public long VirtualSize { get; init; }

    [JsonPropertyName("cluster-size")] public long? ClusterSize { get; init; }

    [JsonPropertyName("encrypted")] public bool? Encrypted { get; init; }

    [JsonPropertyName("compressed")] public bool? Compressed { get; init; }

    [JsonPropertyName("backing-filename")] public string? BackingFilename { get; init; }

    [JsonPropertyName("full-backing-filename")] public string? FullBackingFilename { get; init; }

    [JsonPropertyName("backing-filename-format")] public string? BackingFilenameFormat { get; init; }

    [JsonPropertyName("snapshots")] public IReadOnlyList<SnapshotInfo>? Snapshots { get; init; }

    [JsonPropertyName("backing-image")] public ImageInfo? BackingImage { get; init; }

    [JsonPropertyName("format-specific")] public ImageInfoSpecific? FormatSpecific { get; init; }
}

/// <summary>An internal snapshot (SnapshotInfo); also the return of blockdev-snapshot-delete-internal-sync.</summary>
public sealed record SnapshotInfo
{
    [JsonPropertyName("id")] public string Id { get; init; } = "";

    [JsonPropertyName("name")] public string Name { get; init; } = "";

    [JsonPropertyName("vm-state-size")] public long VmStateSize { get; init; }

    [JsonPropertyName("date-sec")] public long DateSec { get; init; }

    [JsonPropertyName("date-nsec")] public long DateNsec { get; init; }

    [JsonPropertyName("vm-clock-sec")] public long VmClockSec { get; init; }

    [JsonPropertyName("vm-clock-nsec")] public long VmClockNsec { get; init; }

    [JsonPropertyName("icount")] public long? Icount { get; init; }
}

/// <summary>
/// Format-specific image information (ImageInfoSpecific): <c>{"type": "qcow2", "data": {…}}</c>.
/// The data stays raw; <see cref="AsQcow2"/> reads qcow2's.
/// </summary>
public sealed record ImageInfoSpecific
{
    /// <summary>"qcow2", "vmdk", "luks" or "rbd".</summary>
    [JsonPropertyName("type")] public string Type { get; init; } = "";

    [JsonPropertyName("data")] public JsonElement Data { get; init; }

    public ImageInfoSpecificQCow2? AsQcow2() =>
        Type == "qcow2" ? Data.Deserialize(QmpJsonContext.Default.ImageInfoSpecificQCow2) : null;

    /// <summary>Format-specific information of a qcow2 image.</summary>
    public static ImageInfoSpecific Qcow2(ImageInfoSpecificQCow2 data) => new()
    {
        Type = "qcow2",
        Data = JsonSerializer.SerializeToElement(data, QmpJsonContext.Default.ImageInfoSpecificQCow2),
    };
}

/// <summary>ImageInfoSpecificQCow2.</summary>
public sealed record ImageInfoSpecificQCow2
{
    /// <summary>"0.10" or "1.1".</summary>
    [JsonPropertyName("compat")] public string Compat { get; init; } = "";

    [JsonPropertyName("data-file")] public string? DataFile { get; init; }

    [JsonPropertyName("data-file-raw")] public bool? DataFileRaw { get; init; }

    [JsonPropertyName("extended-l2")] public bool? ExtendedL2 { get; init; }

    [JsonPropertyName("lazy-refcounts")] public bool? LazyRefcounts { get; init; }

    [JsonPropertyName("corrupt")] public bool? Corrupt { get; init; }

    [JsonPropertyName("refcount-bits")] public long RefcountBits { get; init; }

    [JsonPropertyName("encrypt")] public JsonElement? Encrypt { get; init; }

    [JsonPropertyName("bitmaps")] public IReadOnlyList<Qcow2BitmapInfo>? Bitmaps { get; init; }

    [JsonPropertyName("compression-type")] public Qcow2CompressionType CompressionType { get; init; }
}

/// <summary>A persistent bitmap in a qcow2 image (Qcow2BitmapInfo).</summary>
public sealed record Qcow2BitmapInfo
{
    [JsonPropertyName("name")] public string Name { get; init; } = "";

    [JsonPropertyName("granularity")] public long Granularity { get; init; }

    /// <summary>Qcow2BitmapInfoFlags: "in-use", "auto", "unknown".</summary>
    [JsonPropertyName("flags")] public IReadOnlyList<string> Flags { get; init; } = [];
}

/// <summary>BlockDeviceIoStatus.</summary>
[JsonConverter(typeof(QapiEnumConverter<BlockDeviceIoStatus>))]
public enum BlockDeviceIoStatus
{
    Ok,
    Failed,
    Nospace,
}

/// <summary>A block backend (BlockInfo), from query-block. qemu-storage-daemon has none of its own.</summary>
public sealed record BlockInfo
{
    [JsonPropertyName("device")] public string Device { get; init; } = "";

    [JsonPropertyName("qdev")] public string? Qdev { get; init; }

    [JsonPropertyName("type")] public string Type { get; init; } = "";

    [JsonPropertyName("removable")] public bool Removable { get; init; }

    [JsonPropertyName("locked")] public bool Locked { get; init; }

    [JsonPropertyName("inserted")] public BlockDeviceInfo? Inserted { get; init; }

    [JsonPropertyName("tray_open")] public bool? TrayOpen { get; init; }

    [JsonPropertyName("io-status")] public BlockDeviceIoStatus? IoStatus { get; init; }
}
