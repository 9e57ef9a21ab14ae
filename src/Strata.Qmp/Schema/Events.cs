using System.Text.Json.Serialization;

namespace Strata.Qmp;

// The events a storage daemon sends (qapi/job.json, qapi/block-core.json, qapi/block-export.json, qapi/run-state.json).

/// <summary>Event names.</summary>
public static class QmpEventNames
{
    public const string JobStatusChange = "JOB_STATUS_CHANGE";
    public const string BlockJobCompleted = "BLOCK_JOB_COMPLETED";
    public const string BlockJobCancelled = "BLOCK_JOB_CANCELLED";
    public const string BlockJobError = "BLOCK_JOB_ERROR";
    public const string BlockJobReady = "BLOCK_JOB_READY";
    public const string BlockJobPending = "BLOCK_JOB_PENDING";
    public const string BlockExportDeleted = "BLOCK_EXPORT_DELETED";
    public const string Shutdown = "SHUTDOWN";
}

/// <summary>JOB_STATUS_CHANGE.</summary>
public sealed record JobStatusChangeEvent
{
    [JsonPropertyName("id")] public string Id { get; init; } = "";

    [JsonPropertyName("status")] public JobStatus Status { get; init; }
}

/// <summary>BLOCK_JOB_COMPLETED: <see cref="Error"/> is set when the job failed.</summary>
public sealed record BlockJobCompletedEvent
{
    [JsonPropertyName("type")] public JobType Type { get; init; }

    /// <summary>The job id.</summary>
    [JsonPropertyName("device")] public string Device { get; init; } = "";

    [JsonPropertyName("len")] public long Len { get; init; }

    [JsonPropertyName("offset")] public long Offset { get; init; }

    [JsonPropertyName("speed")] public long Speed { get; init; }

    [JsonPropertyName("error")] public string? Error { get; init; }
}

/// <summary>BLOCK_JOB_CANCELLED.</summary>
public sealed record BlockJobCancelledEvent
{
    [JsonPropertyName("type")] public JobType Type { get; init; }

    [JsonPropertyName("device")] public string Device { get; init; } = "";

    [JsonPropertyName("len")] public long Len { get; init; }

    [JsonPropertyName("offset")] public long Offset { get; init; }

    [JsonPropertyName("speed")] public long Speed { get; init; }
}

/// <summary>IoOperationType.</summary>
[JsonConverter(typeof(QapiEnumConverter<IoOperationType>))]
public enum IoOperationType
{
    Read,
    Write,
}

/// <summary>BlockErrorAction.</summary>
[JsonConverter(typeof(QapiEnumConverter<BlockErrorAction>))]
public enum BlockErrorAction
{
    Ignore,
    Report,
    Stop,
}

/// <summary>BLOCK_JOB_ERROR.</summary>
public sealed record BlockJobErrorEvent
{
    [JsonPropertyName("device")] public string Device { get; init; } = "";

    [JsonPropertyName("operation")] public IoOperationType Operation { get; init; }

    [JsonPropertyName("action")] public BlockErrorAction Action { get; init; }
}

/// <summary>BLOCK_JOB_READY.</summary>
public sealed record BlockJobReadyEvent
{
    [JsonPropertyName("type")] public JobType Type { get; init; }

    [JsonPropertyName("device")] public string Device { get; init; } = "";

    [JsonPropertyName("len")] public long Len { get; init; }

    [JsonPropertyName("offset")] public long Offset { get; init; }

    [JsonPropertyName("speed")] public long Speed { get; init; }
}

/// <summary>BLOCK_JOB_PENDING.</summary>
public sealed record BlockJobPendingEvent
{
    [JsonPropertyName("type")] public JobType Type { get; init; }

    [JsonPropertyName("id")] public string Id { get; init; } = "";
}

/// <summary>BLOCK_EXPORT_DELETED.</summary>
public sealed record BlockExportDeletedEvent
{
    [JsonPropertyName("id")] public string Id { get; init; } = "";
}
