using System.Text.Json.Serialization;

namespace Strata.Qmp;

// qapi/job.json, qapi/block-core.json: query-jobs, job-*, query-block-jobs, block-job-*.

/// <summary>JobType.</summary>
[JsonConverter(typeof(QapiEnumConverter<JobType>))]
public enum JobType
{
    Commit,
    Stream,
    Mirror,
    Backup,
    Create,
    Amend,
    SnapshotLoad,
    SnapshotSave,
    SnapshotDelete,
}

/// <summary>JobStatus: the states of QEMU's job state machine.</summary>
[JsonConverter(typeof(QapiEnumConverter<JobStatus>))]
public enum JobStatus
{
    Undefined,
    Created,
    Running,
    Paused,
    Ready,
    Standby,
    Waiting,
    Pending,
    Aborting,
    Concluded,
    Null,
}

/// <summary>A job (JobInfo), from query-jobs.</summary>
public sealed record JobInfo
{
    [JsonPropertyName("id")] public string Id { get; init; } = "";

    [JsonPropertyName("type")] public JobType Type { get; init; }

    [JsonPropertyName("status")] public JobStatus Status { get; init; }

    [JsonPropertyName("current-progress")] public long CurrentProgress { get; init; }

    [JsonPropertyName("total-progress")] public long TotalProgress { get; init; }

    [JsonPropertyName("error")] public string? Error { get; init; }
}

/// <summary>Arguments of job-cancel, job-pause, job-resume, job-complete, job-dismiss, job-finalize, block-job-dismiss and block-job-finalize.</summary>
public sealed record JobIdArgs
{
    [JsonPropertyName("id")] public required string Id { get; init; }
}

/// <summary>A block job (BlockJobInfo), from query-block-jobs.</summary>
public sealed record BlockJobInfo
{
    /// <summary>The job type, e.g. "backup".</summary>
    [JsonPropertyName("type")] public string Type { get; init; } = "";

    /// <summary>The job id (for historical reasons called device).</summary>
    [JsonPropertyName("device")] public string Device { get; init; } = "";

    [JsonPropertyName("len")] public long Len { get; init; }

    [JsonPropertyName("offset")] public long Offset { get; init; }

    [JsonPropertyName("busy")] public bool Busy { get; init; }

    [JsonPropertyName("paused")] public bool Paused { get; init; }

    [JsonPropertyName("speed")] public long Speed { get; init; }

    [JsonPropertyName("io-status")] public BlockDeviceIoStatus IoStatus { get; init; }

    [JsonPropertyName("ready")] public bool Ready { get; init; }

    [JsonPropertyName("status")] public JobStatus Status { get; init; }

    [JsonPropertyName("auto-finalize")] public bool AutoFinalize { get; init; }

    [JsonPropertyName("auto-dismiss")] public bool AutoDismiss { get; init; }

    [JsonPropertyName("error")] public string? Error { get; init; }
}

/// <summary>Arguments of block-job-pause, block-job-resume and block-job-complete.</summary>
public sealed record BlockJobDeviceArgs
{
    /// <summary>The job id.</summary>
    [JsonPropertyName("device")] public required string Device { get; init; }
}

/// <summary>Arguments of block-job-cancel.</summary>
public sealed record BlockJobCancelArgs
{
    [JsonPropertyName("device")] public required string Device { get; init; }

    [JsonPropertyName("force")] public bool? Force { get; init; }
}

/// <summary>Arguments of block-job-set-speed.</summary>
public sealed record BlockJobSetSpeedArgs
{
    [JsonPropertyName("device")] public required string Device { get; init; }

    /// <summary>Bytes per second; 0 for unlimited.</summary>
    [JsonPropertyName("speed")] public required long Speed { get; init; }
}
