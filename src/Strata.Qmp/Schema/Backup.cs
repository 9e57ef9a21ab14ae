using System.Text.Json.Serialization;

namespace Strata.Qmp;

// qapi/block-core.json: drive-backup (DriveBackup), blockdev-backup (BlockdevBackup), their base BackupCommon.

/// <summary>MirrorSyncMode.</summary>
[JsonConverter(typeof(QapiEnumConverter<MirrorSyncMode>))]
public enum MirrorSyncMode
{
    Top,
    Full,
    None,
    Incremental,
    Bitmap,
}

/// <summary>BitmapSyncMode.</summary>
[JsonConverter(typeof(QapiEnumConverter<BitmapSyncMode>))]
public enum BitmapSyncMode
{
    OnSuccess,
    Never,
    Always,
}

/// <summary>BlockdevOnError.</summary>
[JsonConverter(typeof(QapiEnumConverter<BlockdevOnError>))]
public enum BlockdevOnError
{
    Report,
    Ignore,
    Enospc,
    Stop,
    Auto,
}

/// <summary>BackupPerf (x-perf).</summary>
public sealed record BackupPerf
{
    [JsonPropertyName("use-copy-range")] public bool? UseCopyRange { get; init; }

    [JsonPropertyName("max-workers")] public long? MaxWorkers { get; init; }

    [JsonPropertyName("max-chunk")] public long? MaxChunk { get; init; }
}

/// <summary>Arguments of drive-backup: back up a node to a file that QEMU opens (or creates).</summary>
public sealed record DriveBackupArgs
{
    [JsonPropertyName("job-id")] public string? JobId { get; init; }

    /// <summary>Source device or node name.</summary>
    [JsonPropertyName("device")] public required string Device { get; init; }

    [JsonPropertyName("sync")] public required MirrorSyncMode Sync { get; init; }

    [JsonPropertyName("speed")] public long? Speed { get; init; }

    [JsonPropertyName("bitmap")] public string? Bitmap { get; init; }

    [JsonPropertyName("bitmap-mode")] public BitmapSyncMode? BitmapMode { get; init; }

    [JsonPropertyName("compress")] public bool? Compress { get; init; }

    [JsonPropertyName("on-source-error")] public BlockdevOnError? OnSourceError { get; init; }

    [JsonPropertyName("on-target-error")] public BlockdevOnError? OnTargetError { get; init; }

    [JsonPropertyName("auto-finalize")] public bool? AutoFinalize { get; init; }

    [JsonPropertyName("auto-dismiss")] public bool? AutoDismiss { get; init; }

    [JsonPropertyName("filter-node-name")] public string? FilterNodeName { get; init; }

    [JsonPropertyName("x-perf")] public BackupPerf? XPerf { get; init; }

    /// <summary>Target file name.</summary>
    [JsonPropertyName("target")] public required string Target { get; init; }

    /// <summary>Target format (default: the source's).</summary>
    [JsonPropertyName("format")] public string? Format { get; init; }

    [JsonPropertyName("mode")] public NewImageMode? Mode { get; init; }
}

/// <summary>Arguments of blockdev-backup: back up a node to another node.</summary>
public sealed record BlockdevBackupArgs
{
    [JsonPropertyName("job-id")] public string? JobId { get; init; }

    [JsonPropertyName("device")] public required string Device { get; init; }

    [JsonPropertyName("sync")] public required MirrorSyncMode Sync { get; init; }

    [JsonPropertyName("speed")] public long? Speed { get; init; }

    [JsonPropertyName("bitmap")] public string? Bitmap { get; init; }

    [JsonPropertyName("bitmap-mode")] public BitmapSyncMode? BitmapMode { get; init; }

    [JsonPropertyName("compress")] public bool? Compress { get; init; }

    [JsonPropertyName("on-source-error")] public BlockdevOnError? OnSourceError { get; init; }

    [JsonPropertyName("on-target-error")] public BlockdevOnError? OnTargetError { get; init; }

    [JsonPropertyName("auto-finalize")] public bool? AutoFinalize { get; init; }

    [JsonPropertyName("auto-dismiss")] public bool? AutoDismiss { get; init; }

    [JsonPropertyName("filter-node-name")] public string? FilterNodeName { get; init; }

    [JsonPropertyName("x-perf")] public BackupPerf? XPerf { get; init; }

    /// <summary>Target node name.</summary>
    [JsonPropertyName("target")] public required string Target { get; init; }
}
