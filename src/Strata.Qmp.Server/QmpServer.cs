using System.Buffers;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Strata.Qmp.Server.Commands;
using Strata.Qmp.Server.Schema;
using Strata.Server;

namespace Strata.Qmp.Server;

/// <summary>What a QMP server announces and how it stops the process.</summary>
public sealed class QmpServerOptions
{
    /// <summary>The version in the greeting and in query-version.</summary>
    public VersionInfo Version { get; init; } = new()
    {
        Qemu = new VersionTriple { Major = 7, Minor = 2, Micro = 0 },
        Package = "strata-daemon 0.1",
    };

    /// <summary>Called after quit's reply has been sent: the host stops the daemon.</summary>
    public Action? Quit { get; init; }
}

/// <summary>
/// The QMP monitor of a <see cref="StorageDaemon"/>: listeners (unix sockets, TCP) and a session per connection,
/// the command table, and the events of the daemon broadcast to every negotiated session. Commands of all
/// sessions run one at a time, as in QEMU's main loop.
/// </summary>
public sealed class QmpServer : IAsyncDisposable
{
    private readonly List<Socket> _listeners = [];
    private readonly List<Task> _tasks = [];
    private readonly List<QmpSession> _sessions = [];
    private readonly CancellationTokenSource _shutdown = new();
    private readonly ILoggerFactory _loggers;
    private JsonElement? _schema;
    private int _sessionCounter;

    public QmpServer(StorageDaemon daemon, QmpServerOptions? options = null, ILoggerFactory? loggers = null)
    {
        Daemon = daemon;
        Options = options ?? new QmpServerOptions();
        _loggers = loggers ?? NullLoggerFactory.Instance;
        Log = _loggers.CreateLogger("Strata.Qmp.Server");
        Commands = StandardCommands.Create();
        daemon.EventRaised += OnDaemonEvent;
    }

    public StorageDaemon Daemon { get; }

    public QmpServerOptions Options { get; }

    public QmpCommandTable Commands { get; }

    internal ILogger Log { get; }

    /// <summary>The events this server may send, for the schema.</summary>
    public static IReadOnlyList<(string Name, QapiObject Data)> Events { get; } =
    [
        (QmpEventNames.BlockExportDeleted, QmpTypes.BlockExportDeletedData),
        ("BLOCK_JOB_CANCELLED", BackupTypes.BlockJobCancelledData),
        ("BLOCK_JOB_COMPLETED", BackupTypes.BlockJobCompletedData),
        ("BLOCK_JOB_ERROR", BackupTypes.BlockJobErrorData),
        ("BLOCK_JOB_PENDING", BackupTypes.BlockJobPendingData),
        ("BLOCK_JOB_READY", BackupTypes.BlockJobReadyData),
        (QmpEventNames.JobStatusChange, JobTypes.JobStatusChangeData),
    ];

    /// <summary>query-qmp-schema's reply, built once from the command table.</summary>
    public JsonElement Schema => _schema ??= SchemaBuilder.Build(Commands.Commands, Events);

    /// <summary>Listens on a unix socket (an existing file at <paramref name="path"/> is replaced, as QEMU does).</summary>
    public void ListenUnix(string path)
    {
        if (File.Exists(path))
        {
            File.Delete(path);
        }

        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            socket.Bind(new UnixDomainSocketEndPoint(path));
            socket.Listen(16);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        StartAccepting(socket, path);
    }

    /// <summary>Listens on a TCP endpoint.</summary>
    public void ListenTcp(IPEndPoint endPoint)
    {
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            socket.Bind(endPoint);
            socket.Listen(16);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        StartAccepting(socket, endPoint.ToString());
    }

    private void StartAccepting(Socket socket, string where)
    {
        lock (_listeners)
        {
            _listeners.Add(socket);
            _tasks.Add(AcceptLoopAsync(socket, where));
        }

        Log.LogInformation("QMP monitor listening on {Address}", where);
    }

    private async Task AcceptLoopAsync(Socket listener, string where)
    {
        while (!_shutdown.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await listener.AcceptAsync(_shutdown.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                break;
            }

            if (client.ProtocolType == ProtocolType.Tcp)
            {
                client.NoDelay = true;
            }

            var stream = new NetworkStream(client, ownsSocket: true);
            var task = RunSessionAsync(stream, where);
            lock (_listeners)
            {
                _tasks.Add(task);
            }
        }
    }

    /// <summary>Runs a session over any duplex stream until the peer closes it or the server shuts down.</summary>
    public async Task RunSessionAsync(Stream stream, string peer = "stream")
    {
        int id = Interlocked.Increment(ref _sessionCounter);
        var session = new QmpSession(this, id, stream, peer);
        lock (_sessions)
        {
            _sessions.Add(session);
        }

        try
        {
            await session.RunAsync(_shutdown.Token).ConfigureAwait(false);
        }
        finally
        {
            lock (_sessions)
            {
                _sessions.Remove(session);
            }

            await stream.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Runs one command. The caller holds the daemon's main loop from before the command until its reply is queued
    /// (one command at a time across sessions, and no job completes in between).
    /// </summary>
    internal async ValueTask<JsonElement> ExecuteAsync(QmpCommand command, QmpCommandContext context, JsonElement args, CancellationToken ct)
    {
        QapiVisitor.Check(command.Arguments, args);
        return await command.Handler(context, args, ct).ConfigureAwait(false);
    }

    private void OnDaemonEvent(DaemonEvent e)
    {
        var bytes = QmpWire.Event(e.Name, EventData(e.Data), QmpTimestamp.Now());
        QmpSession[] sessions;
        lock (_sessions)
        {
            sessions = [.. _sessions];
        }

        Log.LogDebug("event {Event}", e.Name);
        foreach (var s in sessions)
        {
            s.SendEvent(bytes);
        }
    }

    /// <summary>Event data (strings, numbers, booleans, nested dictionaries) as JSON, members in the order given.</summary>
    internal static JsonElement EventData(IReadOnlyDictionary<string, object?> data)
    {
        var buffer = new ArrayBufferWriter<byte>(128);
        using (var w = new Utf8JsonWriter(buffer))
        {
            WriteValue(w, data);
        }

        using var doc = JsonDocument.Parse(buffer.WrittenMemory);
        return doc.RootElement.Clone();
    }

    private static void WriteValue(Utf8JsonWriter w, object? value)
    {
        switch (value)
        {
            case null: w.WriteNullValue(); break;
            case string s: w.WriteStringValue(s); break;
            case bool b: w.WriteBooleanValue(b); break;
            case int i: w.WriteNumberValue(i); break;
            case long l: w.WriteNumberValue(l); break;
            case ulong u: w.WriteNumberValue(u); break;
            case double d: w.WriteNumberValue(d); break;
            case JsonElement el: el.WriteTo(w); break;
            case IReadOnlyDictionary<string, object?> dict:
                w.WriteStartObject();
                foreach (var (k, v) in dict)
                {
                    w.WritePropertyName(k);
                    WriteValue(w, v);
                }

                w.WriteEndObject();
                break;
            case System.Collections.IEnumerable list:
                w.WriteStartArray();
                foreach (var item in list)
                {
                    WriteValue(w, item);
                }

                w.WriteEndArray();
                break;
            default: w.WriteStringValue(value.ToString()); break;
        }
    }

    /// <summary>Closes the listeners and every session.</summary>
    public async ValueTask DisposeAsync()
    {
        Daemon.EventRaised -= OnDaemonEvent;
        await _shutdown.CancelAsync().ConfigureAwait(false);
        Task[] tasks;
        lock (_listeners)
        {
            foreach (var l in _listeners)
            {
                l.Dispose();
            }

            tasks = [.. _tasks];
        }

        try
        {
            await Task.WhenAll(tasks).WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            Log.LogDebug("closing QMP sessions: {Message}", e.Message);
        }

        _shutdown.Dispose();
    }
}
