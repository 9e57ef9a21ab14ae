using System.Text.Json.Serialization;

namespace Strata.Qmp;

/// <summary>An event's time: <c>{"seconds": …, "microseconds": …}</c> since the Unix epoch (host clock).</summary>
public sealed record QmpTimestamp
{
    [JsonPropertyName("seconds")] public long Seconds { get; init; }

    [JsonPropertyName("microseconds")] public long Microseconds { get; init; }

    public DateTimeOffset ToDateTimeOffset() =>
        DateTimeOffset.FromUnixTimeSeconds(Seconds).AddTicks(Microseconds * 10);

    public static QmpTimestamp FromDateTimeOffset(DateTimeOffset time)
    {
        var ticks = time.UtcTicks - DateTimeOffset.UnixEpoch.UtcTicks;
        return new QmpTimestamp { Seconds = ticks / TimeSpan.TicksPerSecond, Microseconds = ticks % TimeSpan.TicksPerSecond / 10 };
    }

    /// <summary>The current time, as QEMU stamps events (g_get_real_time).</summary>
    public static QmpTimestamp Now(TimeProvider? clock = null) =>
        FromDateTimeOffset((clock ?? TimeProvider.System).GetUtcNow());
}
