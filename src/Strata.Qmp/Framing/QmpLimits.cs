namespace Strata.Qmp.Framing;

/// <summary>
/// Limits on one incoming JSON message, as in QEMU's qobject/json-streamer.c. A message past
/// a limit is answered with QEMU's error ("JSON token size limit exceeded", ...) and the
/// stream goes on: the connection is not dropped.
/// </summary>
public sealed record QmpLimits
{
    /// <summary>QEMU's limits: 64 MiB of token text, 2 Mi tokens, nesting depth 1024.</summary>
    public static QmpLimits Qemu { get; } = new();

    /// <summary>Largest single token and largest sum of the token sizes of one message, in bytes (QEMU: 64 MiB).</summary>
    public long MaxTokenSize { get; init; } = 64L << 20;

    /// <summary>Most tokens in one message (QEMU: 2 Mi).</summary>
    public int MaxTokenCount { get; init; } = 2 << 20;

    /// <summary>Deepest nesting of objects and arrays (QEMU: 1024).</summary>
    public int MaxNesting { get; init; } = 1 << 10;
}
