using System.Text.Json;
using System.Text.Json.Serialization;

namespace Strata.Qmp;

// qapi/block-core.json: query-blockstats (BlockStats).

/// <summary>Arguments of query-blockstats.</summary>
public sealed record QueryBlockstatsArgs
{
    /// <summary>Report every named node instead of the block backends.</summary>
    [JsonPropertyName("query-nodes")] public bool? QueryNodes { get; init; }
}

/// <summary>Statistics of a backend or node (BlockStats).</summary>
public sealed record BlockStats
{
    [JsonPropertyName("device")] public string? Device { get; init; }

    [JsonPropertyName("qdev")] public string? Qdev { get; init; }

    [JsonPropertyName("node-name")] public string? NodeName { get; init; }

    [JsonPropertyName("stats")] public BlockDeviceStats Stats { get; init; } = new();

    [JsonPropertyName("driver-specific")] public BlockStatsSpecific? DriverSpecific { get; init; }

    [JsonPropertyName("parent")] public BlockStats? Parent { get; init; }

    [JsonPropertyName("backing")] public BlockStats? Backing { get; init; }
}

/// <summary>I/O counters (BlockDeviceStats).</summary>
public sealed record BlockDeviceStats
{
    [JsonPropertyName("rd_bytes")] public long RdBytes { get; init; }

    [JsonPropertyName("wr_bytes")] public long WrBytes { get; init; }

    [JsonPropertyName("unmap_bytes")] public long UnmapBytes { get; init; }

    [JsonPropertyName("rd_operations")] public long RdOperations { get; init; }

    [JsonPropertyName("wr_operations")] public long WrOperations { get; init; }

    [JsonPropertyName("flush_operations")] public long FlushOperations { get; init; }

    [JsonPropertyName("unmap_operations")] public long UnmapOperations { get; init; }

    [JsonPropertyName("rd_total_time_ns")] public long RdTotalTimeNs { get; init; }

    [JsonPropertyName("wr_total_time_ns")] public long WrTotalTimeNs { get; init; }

    [JsonPropertyName("flush_total_time_ns")] public long FlushTotalTimeNs { get; init; }

    [JsonPropertyName("unmap_total_time_ns")] public long UnmapTotalTimeNs { get; init; }

    [JsonPropertyName("wr_highest_offset")] public long WrHighestOffset { get; init; }

    [JsonPropertyName("rd_merged")] public long RdMerged { get; init; }

    [JsonPropertyName("wr_merged")] public long WrMerged { get; init; }

    [JsonPropertyName("unmap_merged")] public long UnmapMerged { get; init; }

    [JsonPropertyName("idle_time_ns")] public long? IdleTimeNs { get; init; }

    [JsonPropertyName("failed_rd_operations")] public long FailedRdOperations { get; init; }

    [JsonPropertyName("failed_wr_operations")] public long FailedWrOperations { get; init; }

    [JsonPropertyName("failed_flush_operations")] public long FailedFlushOperations { get; init; }

    [JsonPropertyName("failed_unmap_operations")] public long FailedUnmapOperations { get; init; }

    [JsonPropertyName("invalid_rd_operations")] public long InvalidRdOperations { get; init; }

    [JsonPropertyName("invalid_wr_operations")] public long InvalidWrOperations { get; init; }

    [JsonPropertyName("invalid_flush_operations")] public long InvalidFlushOperations { get; init; }

    [JsonPropertyName("invalid_unmap_operations")] public long InvalidUnmapOperations { get; init; }

    [JsonPropertyName("account_invalid")] public bool AccountInvalid { get; init; }

    [JsonPropertyName("account_failed")] public bool AccountFailed { get; init; }

    [JsonPropertyName("timed_stats")] public IReadOnlyList<BlockDeviceTimedStats> TimedStats { get; init; } = [];

    [JsonPropertyName("rd_latency_histogram")] public BlockLatencyHistogramInfo? RdLatencyHistogram { get; init; }

    [JsonPropertyName("wr_latency_histogram")] public BlockLatencyHistogramInfo? WrLatencyHistogram { get; init; }

    [JsonPropertyName("flush_latency_histogram")] public BlockLatencyHistogramInfo? FlushLatencyHistogram { get; init; }
}

/// <summary>Latency statistics over an interval (BlockDeviceTimedStats).</summary>
public sealed record BlockDeviceTimedStats
{
    [JsonPropertyName("interval_length")] public long IntervalLength { get; init; }

    [JsonPropertyName("min_rd_latency_ns")] public long MinRdLatencyNs { get; init; }

    [JsonPropertyName("max_rd_latency_ns")] public long MaxRdLatencyNs { get; init; }

    [JsonPropertyName("avg_rd_latency_ns")] public long AvgRdLatencyNs { get; init; }

    [JsonPropertyName("min_wr_latency_ns")] public long MinWrLatencyNs { get; init; }

    [JsonPropertyName("max_wr_latency_ns")] public long MaxWrLatencyNs { get; init; }

    [JsonPropertyName("avg_wr_latency_ns")] public long AvgWrLatencyNs { get; init; }

    [JsonPropertyName("min_flush_latency_ns")] public long MinFlushLatencyNs { get; init; }

    [JsonPropertyName("max_flush_latency_ns")] public long MaxFlushLatencyNs { get; init; }

    [JsonPropertyName("avg_flush_latency_ns")] public long AvgFlushLatencyNs { get; init; }

    [JsonPropertyName("avg_rd_queue_depth")] public double AvgRdQueueDepth { get; init; }

    [JsonPropertyName("avg_wr_queue_depth")] public double AvgWrQueueDepth { get; init; }
}

/// <summary>BlockLatencyHistogramInfo.</summary>
public sealed record BlockLatencyHistogramInfo
{
    [JsonPropertyName("boundaries")] public IReadOnlyList<long> Boundaries { get; init; } = [];

    [JsonPropertyName("bins")] public IReadOnlyList<long> Bins { get; init; } = [];
}

/// <summary>
/// Driver-specific statistics (BlockStatsSpecific): the driver, and its members in
/// <see cref="Members"/> (file and host_device: discard-nb-ok, discard-nb-failed, discard-bytes-ok).
/// </summary>
public sealed record BlockStatsSpecific
{
    [JsonPropertyName("driver")] public string Driver { get; init; } = "";

    [JsonExtensionData] public Dictionary<string, JsonElement>? Members { get; set; }
}
