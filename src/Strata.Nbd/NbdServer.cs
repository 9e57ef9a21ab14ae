using System.Buffers;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Strata.Nbd.Server;

namespace Strata.Nbd;

/// <summary>
/// An NBD server as qemu-storage-daemon 7.2 runs it: fixed-newstyle handshake, structured replies, meta contexts,
/// exports added and removed at run time, any number of unix-socket and TCP listeners sharing one connection limit.
/// Thread-safe. The server never owns the images it exports.
/// </summary>
public sealed class NbdServer : IAsyncDisposable
{
    private readonly object _gate = new();
    private readonly List<NbdExport> _exports = [];
    private readonly Dictionary<NbdExport, HashSet<NbdConnection>> _attached = [];
    private readonly HashSet<NbdConnection> _connections = [];
    private readonly List<Listener> _listeners = [];
    private readonly SemaphoreSlim? _connectionSlots;
    private CancellationTokenSource? _acceptCts;
    private bool _started;
    private bool _stopped;

    public NbdServer(NbdServerOptions? options = null, ILogger? logger = null)
    {
        Options = options ?? new NbdServerOptions();
        ArgumentOutOfRangeException.ThrowIfNegative(Options.MaxConnections);
        ArgumentOutOfRangeException.ThrowIfLessThan(Options.MaxRequestsPerConnection, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(Options.ReceiveBufferSize, 4096);
        Logger = logger ?? NullLogger.Instance;
        if (Options.MaxConnections > 0)
            _connectionSlots = new SemaphoreSlim(Options.MaxConnections, Options.MaxConnections);
    }

    public NbdServerOptions Options { get; }

    internal ILogger Logger { get; }

    /// <summary>Exports in the order they were added (the order of NBD_OPT_LIST replies).</summary>
    public IReadOnlyList<NbdExport> Exports
    {
        get
        {
            lock (_gate)
                return [.. _exports];
        }
    }

    /// <summary>Open client connections (negotiating or transmitting).</summary>
    public int ConnectionCount
    {
        get
        {
            lock (_gate)
                return _connections.Count;
        }
    }

    /// <summary>Where the listeners listen (with the port the system chose for TCP port 0).</summary>
    public IReadOnlyList<EndPoint> EndPoints
    {
        get
        {
            lock (_gate)
                return [.. _listeners.Select(l => l.EndPoint)];
        }
    }

    // ------------------------------------------------------------------ listeners

    /// <summary>Listens on a unix socket (an existing socket file at <paramref name="path"/> is replaced, as QEMU does).</summary>
    public EndPoint AddUnixListener(string path)
    {
        if (File.Exists(path))
            File.Delete(path); // QEMU unlinks the path before binding
        return AddListener(new UnixDomainSocketEndPoint(path));
    }

    /// <summary>Listens on TCP (port 0 picks a free port: read it from the returned end point).</summary>
    public EndPoint AddTcpListener(IPEndPoint endPoint) => AddListener(endPoint);

    /// <summary>Binds a listener now (bind errors surface here); it accepts clients once the server is started.</summary>
    public EndPoint AddListener(EndPoint endPoint)
    {
        ArgumentNullException.ThrowIfNull(endPoint);
        lock (_gate)
            ObjectDisposedException.ThrowIf(_stopped, this);
        var socket = endPoint is UnixDomainSocketEndPoint
            ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
            : new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            if (endPoint is IPEndPoint)
                socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            socket.Bind(endPoint);
            socket.Listen(Options.Backlog);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        var listener = new Listener(socket, socket.LocalEndPoint ?? endPoint, endPoint is UnixDomainSocketEndPoint ? endPoint.ToString() : null);
        lock (_gate)
        {
            if (_stopped)
            {
                listener.Dispose();
                throw new ObjectDisposedException(nameof(NbdServer));
            }
            _listeners.Add(listener);
            if (_started)
                listener.AcceptLoop = AcceptLoopAsync(listener, _acceptCts!.Token);
        }
        Logger.LogDebug("NBD server listening on {EndPoint}", listener.EndPoint);
        return listener.EndPoint;
    }

    /// <summary>Starts accepting clients on every listener (those added later start at once).</summary>
    public Task StartAsync(CancellationToken ct = default)
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_stopped, this);
            if (_started)
                return Task.CompletedTask;
            _started = true;
            _acceptCts = new CancellationTokenSource();
            foreach (var l in _listeners)
                l.AcceptLoop = AcceptLoopAsync(l, _acceptCts.Token);
        }
        return Task.CompletedTask;
    }

    /// <summary>
    /// Stops listening, lets every connection finish the requests it has received (their replies are sent), then
    /// closes the connections. When <paramref name="ct"/> fires first, connections are cut at once; the call still
    /// waits for requests that are running against an image.
    /// </summary>
    public async Task StopAsync(CancellationToken ct = default)
    {
        List<Listener> listeners;
        List<NbdConnection> connections;
        lock (_gate)
        {
            if (_stopped && _listeners.Count == 0 && _connections.Count == 0)
                return;
            _stopped = true;
            listeners = [.. _listeners];
            _listeners.Clear();
            connections = [.. _connections];
        }
        _acceptCts?.Cancel();
        foreach (var l in listeners)
            l.Dispose();
        foreach (var l in listeners)
        {
            if (l.AcceptLoop != null)
                await l.AcceptLoop.ConfigureAwait(false);
        }
        await CloseConnectionsAsync(connections, ct).ConfigureAwait(false);
        _acceptCts?.Dispose();
        Logger.LogDebug("NBD server stopped");
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync().ConfigureAwait(false);
        _connectionSlots?.Dispose();
    }

    private static async Task CloseConnectionsAsync(List<NbdConnection> connections, CancellationToken ct)
    {
        foreach (var c in connections)
            c.RequestStop();
        var all = Task.WhenAll(connections.Select(c => c.Completion));
        try
        {
            await all.WaitAsync(ct).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            foreach (var c in connections)
                c.Abort();
            await all.ConfigureAwait(false);
        }
    }

    private async Task AcceptLoopAsync(Listener listener, CancellationToken ct)
    {
        await Task.Yield();
        if (Options.AcceptAfter is { } gate)
        {
            try
            {
                await gate.WaitAsync(ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return; // stopped before serving anyone (a daemon whose command line failed)
            }
        }
        while (!ct.IsCancellationRequested)
        {
            bool slotTaken = false;
            try
            {
                if (_connectionSlots != null)
                {
                    await _connectionSlots.WaitAsync(ct).ConfigureAwait(false);
                    slotTaken = true;
                }
                var socket = await listener.Socket.AcceptAsync(ct).ConfigureAwait(false);
                var connection = new NbdConnection(this, socket);
                lock (_gate)
                {
                    if (_stopped)
                    {
                        socket.Dispose();
                        break;
                    }
                    _connections.Add(connection);
                }
                slotTaken = false;
                connection.Start();
            }
            catch (OperationCanceledException)
            {
                break;
            }
            catch (ObjectDisposedException)
            {
                break;
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.OperationAborted or SocketError.Interrupted or SocketError.Shutdown)
            {
                break;
            }
            catch (SocketException e)
            {
                Logger.LogWarning("NBD accept on {EndPoint} failed: {Message}", listener.EndPoint, e.Message);
                await Task.Delay(50, CancellationToken.None).ConfigureAwait(false);
            }
            finally
            {
                if (slotTaken)
                    _connectionSlots!.Release();
            }
        }
    }

    // ------------------------------------------------------------------ exports

    /// <summary>Offers an export to clients. Names are unique per server.</summary>
    public void AddExport(NbdExport export)
    {
        ArgumentNullException.ThrowIfNull(export);
        lock (_gate)
        {
            foreach (var e in _exports)
            {
                if (e.Name == export.Name)
                    throw new InvalidOperationException($"NBD server already has export named '{export.Name}'");
            }
            _exports.Add(export);
            _attached.Add(export, []);
        }
    }

    public NbdExport? FindExport(string name)
    {
        lock (_gate)
            return _exports.Find(e => e.Name == name);
    }

    /// <summary>The clients attached to the export now (leaving ones included).</summary>
    public int GetClientCount(string name)
    {
        lock (_gate)
        {
            var e = _exports.Find(x => x.Name == name);
            return e == null ? 0 : _attached[e].Count;
        }
    }

    /// <summary>
    /// The clients using the export, once those that have already left have finished closing: QEMU's main loop deals
    /// with a client's hang-up before a monitor command that came after it.
    /// </summary>
    public async Task<int> GetClientCountAsync(string name, CancellationToken ct = default)
    {
        await WaitForLeavingClientsAsync(name, ct).ConfigureAwait(false);
        return GetClientCount(name);
    }

    private Task WaitForLeavingClientsAsync(string name, CancellationToken ct)
    {
        NbdConnection[] leaving;
        lock (_gate)
        {
            var e = _exports.Find(x => x.Name == name);
            if (e == null)
                return Task.CompletedTask;
            leaving = [.. _attached[e].Where(c => c.IsLeaving)];
        }
        return leaving.Length == 0 ? Task.CompletedTask : Task.WhenAll(leaving.Select(c => c.Completion)).WaitAsync(ct);
    }

    /// <summary>
    /// Withdraws an export. <see cref="NbdExportRemoveMode.Safe"/> refuses (<see cref="NbdExportInUseException"/>) while
    /// clients use it; <see cref="NbdExportRemoveMode.Hard"/> disconnects them. Either way, once this returns no request
    /// runs against the export's image any more and the caller may dispose it.
    /// </summary>
    public async Task RemoveExportAsync(string name, NbdExportRemoveMode mode = NbdExportRemoveMode.Safe, CancellationToken ct = default)
    {
        if (mode == NbdExportRemoveMode.Safe)
            await WaitForLeavingClientsAsync(name, ct).ConfigureAwait(false);
        List<NbdConnection> clients;
        lock (_gate)
        {
            var export = _exports.Find(e => e.Name == name) ?? throw new KeyNotFoundException($"Export '{name}' is not found");
            var attached = _attached[export];
            if (mode == NbdExportRemoveMode.Safe && attached.Count > 0)
                throw new NbdExportInUseException($"export '{name}' still in use");
            _exports.Remove(export);
            _attached.Remove(export);
            clients = [.. attached];
        }
        foreach (var c in clients)
            c.Abort();
        await Task.WhenAll(clients.Select(c => c.Completion)).WaitAsync(ct).ConfigureAwait(false);
        Logger.LogDebug("NBD export '{Name}' removed", name);
    }

    // ------------------------------------------------------------------ used by connections

    /// <summary>The export named by the client's bytes (compared byte for byte, as QEMU's strcmp).</summary>
    internal NbdExport? FindExport(ReadOnlySpan<byte> name)
    {
        lock (_gate)
        {
            foreach (var e in _exports)
            {
                if (name.SequenceEqual(e.NameBytes))
                    return e;
            }
        }
        return null;
    }

    internal NbdExport[] SnapshotExports()
    {
        lock (_gate)
            return [.. _exports];
    }

    /// <summary>Binds a connection to an export for transmission; false if the export was removed meanwhile.</summary>
    internal bool TryAttach(NbdExport export, NbdConnection connection)
    {
        lock (_gate)
        {
            if (!_attached.TryGetValue(export, out var set) || _stopped)
                return false;
            set.Add(connection);
            return true;
        }
    }

    internal void OnConnectionClosed(NbdConnection connection, NbdExport? export)
    {
        lock (_gate)
        {
            _connections.Remove(connection);
            if (export != null && _attached.TryGetValue(export, out var set))
                set.Remove(connection);
        }
        _connectionSlots?.Release();
    }

    private sealed class Listener(Socket socket, EndPoint endPoint, string? unixPath) : IDisposable
    {
        public Socket Socket { get; } = socket;
        public EndPoint EndPoint { get; } = endPoint;
        public Task? AcceptLoop { get; set; }

        public void Dispose()
        {
            Socket.Dispose();
            if (unixPath != null)
            {
                try
                {
                    File.Delete(unixPath);
                }
                catch (IOException)
                {
                }
                catch (UnauthorizedAccessException)
                {
                }
            }
        }
    }
}
