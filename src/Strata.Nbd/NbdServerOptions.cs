namespace Strata.Nbd;

/// <summary>Options of an <see cref="NbdServer"/> (qsd's <c>nbd-server-start</c> plus data-path tuning).</summary>
public sealed record NbdServerOptions
{
    /// <summary>
    /// Most simultaneous client connections over all listeners, 0 for no limit (qsd's <c>max-connections</c>).
    /// As in QEMU, further clients are not refused: they wait in the listen backlog until a connection closes.
    /// </summary>
    public int MaxConnections { get; init; }

    /// <summary>
    /// Requests one connection may have in flight (received, not yet answered). When reached, the server stops
    /// reading from that client until a reply has been sent. QEMU uses 16.
    /// </summary>
    public int MaxRequestsPerConnection { get; init; } = 64;

    /// <summary>Size of the receive buffers requests are parsed from.</summary>
    public int ReceiveBufferSize { get; init; } = 128 * 1024;

    /// <summary>Listen backlog of each listener.</summary>
    public int Backlog { get; init; } = 128;

    /// <summary>
    /// Connections are accepted once this completes (null: at once). A daemon still applying its command line binds
    /// its sockets but, like QEMU before its main loop runs, leaves clients in the backlog until its exports exist.
    /// </summary>
    public Task? AcceptAfter { get; init; }
}

/// <summary>How <see cref="NbdServer.RemoveExportAsync"/> treats connected clients (QEMU's block-export-del modes).</summary>
public enum NbdExportRemoveMode
{
    /// <summary>Refuse the removal while a client uses the export.</summary>
    Safe,
    /// <summary>Disconnect the export's clients, wait for their requests in flight, then remove it.</summary>
    Hard,
}

/// <summary>An export cannot be removed in <see cref="NbdExportRemoveMode.Safe"/> mode because clients use it.</summary>
public sealed class NbdExportInUseException : InvalidOperationException
{
    public NbdExportInUseException(string message) : base(message) { }
    public NbdExportInUseException() { }
    public NbdExportInUseException(string message, Exception inner) : base(message, inner) { }
}
