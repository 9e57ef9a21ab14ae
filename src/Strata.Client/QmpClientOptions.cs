using Strata.Qmp.Framing;

namespace Strata.Client;

/// <summary>How a <see cref="QmpClient"/> connects and negotiates.</summary>
public sealed record QmpClientOptions
{
    /// <summary>Enable out-of-band execution when the server offers it (qmp_capabilities enable=["oob"]). Default false.</summary>
    public bool EnableOob { get; init; }

    /// <summary>Send qmp_capabilities right after the greeting (default true); without it only qmp_capabilities is accepted.</summary>
    public bool Negotiate { get; init; } = true;

    /// <summary>How long to wait for the connection and the greeting (default 30 s).</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Limits on messages received (default: QEMU's).</summary>
    public QmpLimits Limits { get; init; } = QmpLimits.Qemu;
}
