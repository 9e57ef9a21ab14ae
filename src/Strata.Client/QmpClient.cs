using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Strata.Qmp;
using Strata.Qmp.Framing;

namespace Strata.Client;

/// <summary>
/// A QMP client for qemu-storage-daemon, QEMU and strata-daemon. Connect with
/// <see cref="ConnectUnixAsync"/>, <see cref="ConnectTcpAsync"/> or <see cref="ConnectAsync(string, QmpClientOptions?, CancellationToken)"/>:
/// the greeting is read (<see cref="Greeting"/>) and capabilities negotiated. Commands may be
/// issued concurrently; each carries an id and its reply is matched by it. Errors come as
/// <see cref="QmpException"/>. Events: <see cref="SubscribeEvents"/>, <see cref="ReadEventsAsync"/>,
/// <see cref="WaitForEventAsync"/>. Disposal closes the connection.
/// </summary>
public sealed partial class QmpClient : IAsyncDisposable, IDisposable
{
    private readonly Stream _stream;
    private readonly QmpFrameReader _reader;
    private readonly QmpFrameWriter _writer;
    private readonly PipeReader _pipeReader;
    private readonly PipeWriter _pipeWriter;
    private readonly ConcurrentDictionary<long, PendingCommand> _pending = new();
    private readonly List<QmpEventSubscription> _subscriptions = [];
    private readonly Lock _subscriptionsLock = new();
    private readonly CancellationTokenSource _shutdown = new();
    private Task _readLoop = Task.CompletedTask;
    private long _nextId;
    private int _disposed;
    private Exception? _closedBecause;

    private QmpClient(Stream stream, QmpClientOptions options)
    {
        _stream = stream;
        _pipeReader = PipeReader.Create(stream, new StreamPipeReaderOptions(leaveOpen: true));
        _pipeWriter = PipeWriter.Create(stream, new StreamPipeWriterOptions(leaveOpen: true));
        _reader = new QmpFrameReader(_pipeReader, options.Limits);
        _writer = new QmpFrameWriter(_pipeWriter, QmpFrameWriter.ClientNewLine);
        Options = options;
    }

    public QmpClientOptions Options { get; }

    /// <summary>The server's greeting.</summary>
    public QmpGreeting Greeting { get; private set; } = new();

    /// <summary>The server's version, from the greeting.</summary>
    public VersionInfo Version => Greeting.Qmp.Version;

    /// <summary>The capabilities the server offered.</summary>
    public IReadOnlyList<string> Capabilities => Greeting.Qmp.Capabilities;

    /// <summary>Whether out-of-band execution was enabled during negotiation.</summary>
    public bool OobEnabled { get; private set; }

    /// <summary>False once the connection has ended.</summary>
    public bool IsConnected => Volatile.Read(ref _closedBecause) is null && _disposed == 0;

    /// <summary>Completes when the connection ends (the server closed it, or disposal).</summary>
    public Task Completion => _readLoop;

    /// <summary>Connects to a unix socket.</summary>
    public static async Task<QmpClient> ConnectUnixAsync(string path, QmpClientOptions? options = null, CancellationToken cancellationToken = default)
    {
        options ??= new QmpClientOptions();
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            using var cts = Timeout(options, cancellationToken);
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(path), cts.Token).ConfigureAwait(false);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        return await ConnectAsync(new NetworkStream(socket, ownsSocket: true), options, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Connects over TCP.</summary>
    public static async Task<QmpClient> ConnectTcpAsync(string host, int port, QmpClientOptions? options = null, CancellationToken cancellationToken = default)
    {
        options ??= new QmpClientOptions();
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            using var cts = Timeout(options, cancellationToken);
            await socket.ConnectAsync(host, port, cts.Token).ConfigureAwait(false);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        return await ConnectAsync(new NetworkStream(socket, ownsSocket: true), options, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Connects to an address: <c>unix:PATH</c>, <c>tcp:HOST:PORT</c>, <c>HOST:PORT</c>, or a path
    /// (anything with a '/').
    /// </summary>
    public static Task<QmpClient> ConnectAsync(string address, QmpClientOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(address);
        if (address.StartsWith("unix:", StringComparison.Ordinal))
        {
            return ConnectUnixAsync(address[5..], options, cancellationToken);
        }

        var hostPort = address.StartsWith("tcp:", StringComparison.Ordinal) ? address[4..] : address;
        var colon = hostPort.LastIndexOf(':');
        if (!address.Contains('/', StringComparison.Ordinal) && colon > 0 &&
            int.TryParse(hostPort.AsSpan(colon + 1), System.Globalization.CultureInfo.InvariantCulture, out var port))
        {
            return ConnectTcpAsync(hostPort[..colon].Trim('[', ']'), port, options, cancellationToken);
        }

        return ConnectUnixAsync(address, options, cancellationToken);
    }

    /// <summary>
    /// Runs QMP over an already connected duplex stream (owned by the client from now on):
    /// reads the greeting and negotiates capabilities.
    /// </summary>
    public static async Task<QmpClient> ConnectAsync(Stream stream, QmpClientOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(stream);
        var client = new QmpClient(stream, options ?? new QmpClientOptions());
        try
        {
            await client.StartAsync(cancellationToken).ConfigureAwait(false);
            return client;
        }
        catch
        {
            await client.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    private static CancellationTokenSource Timeout(QmpClientOptions options, CancellationToken cancellationToken)
    {
        var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        cts.CancelAfter(options.ConnectTimeout);
        return cts;
    }

    private async Task StartAsync(CancellationToken cancellationToken)
    {
        using (var cts = Timeout(Options, cancellationToken))
        {
            using var frame = await _reader.ReadAsync(cts.Token).ConfigureAwait(false)
                ?? throw new QmpConnectionClosedException("the server closed the connection before its greeting");
            if (frame.IsError || QmpMessage.Classify(frame.Root) != QmpMessageKind.Greeting)
            {
                throw new QmpProtocolException($"expected a QMP greeting, got {frame}");
            }

            Greeting = frame.Root.Deserialize(QmpJsonContext.Default.QmpGreeting) ?? new QmpGreeting();
        }

        _readLoop = Task.Run(ReadLoopAsync, CancellationToken.None);
        if (Options.Negotiate)
        {
            var enableOob = Options.EnableOob && Capabilities.Contains(QmpCapabilities.Oob);
            var args = new QmpCapabilitiesArgs { Enable = enableOob ? [QmpCapabilities.Oob] : null };
            await ExecuteAsync("qmp_capabilities", args, QmpJsonContext.Default.QmpCapabilitiesArgs, QmpJsonContext.Default.QmpEmpty, cancellationToken)
                .ConfigureAwait(false);
            OobEnabled = enableOob;
        }
    }

    /// <summary>Sends qmp_capabilities (when the client was created with <see cref="QmpClientOptions.Negotiate"/> false).</summary>
    public async Task NegotiateCapabilitiesAsync(bool enableOob = false, CancellationToken cancellationToken = default)
    {
        var args = new QmpCapabilitiesArgs { Enable = enableOob ? [QmpCapabilities.Oob] : null };
        await ExecuteAsync("qmp_capabilities", args, QmpJsonContext.Default.QmpCapabilitiesArgs, QmpJsonContext.Default.QmpEmpty, cancellationToken)
            .ConfigureAwait(false);
        OobEnabled = enableOob;
    }

    // ------------------------------------------------------------------ commands

    /// <summary>Executes a command with raw JSON arguments (an object, or Undefined for none); returns the raw "return" value.</summary>
    public async Task<JsonElement> ExecuteAsync(string command, JsonElement arguments = default, CancellationToken cancellationToken = default)
    {
        var response = await SendAsync(command, arguments, oob: false, cancellationToken).ConfigureAwait(false);
        return response.Return;
    }

    /// <summary>
    /// Executes a command with typed arguments and result, their metadata taken from
    /// <see cref="QmpJsonContext"/> (use the overload with <see cref="JsonTypeInfo{T}"/>s for other types).
    /// </summary>
    public Task<TResult> ExecuteAsync<TArgs, TResult>(string command, TArgs arguments, CancellationToken cancellationToken = default) =>
        ExecuteAsync(command, arguments, TypeInfo<TArgs>(), TypeInfo<TResult>(), cancellationToken);

    /// <summary>Executes a command with typed arguments and result.</summary>
    public Task<TResult> ExecuteAsync<TArgs, TResult>(
        string command, TArgs arguments, JsonTypeInfo<TArgs> argumentsInfo, JsonTypeInfo<TResult> resultInfo, CancellationToken cancellationToken = default) =>
        ExecuteCoreAsync(command, JsonSerializer.SerializeToElement(arguments, argumentsInfo), resultInfo, oob: false, cancellationToken);

    /// <summary>Executes a command without arguments, with a typed result.</summary>
    public Task<TResult> ExecuteAsync<TResult>(string command, JsonTypeInfo<TResult> resultInfo, CancellationToken cancellationToken = default) =>
        ExecuteCoreAsync(command, default, resultInfo, oob: false, cancellationToken);

    /// <summary>Executes a command out of band (exec-oob); OOB must have been enabled and the command must allow it.</summary>
    public async Task<JsonElement> ExecuteOobAsync(string command, JsonElement arguments = default, CancellationToken cancellationToken = default)
    {
        var response = await SendAsync(command, arguments, oob: true, cancellationToken).ConfigureAwait(false);
        return response.Return;
    }

    private async Task<TResult> ExecuteCoreAsync<TResult>(
        string command, JsonElement arguments, JsonTypeInfo<TResult> resultInfo, bool oob, CancellationToken cancellationToken)
    {
        var response = await SendAsync(command, arguments, oob, cancellationToken).ConfigureAwait(false);
        try
        {
            return response.Return.Deserialize(resultInfo)
                ?? throw new QmpProtocolException($"{command} returned null");
        }
        catch (JsonException ex)
        {
            throw new QmpProtocolException($"cannot read the reply of {command}: {ex.Message}", ex);
        }
    }

    private static JsonTypeInfo<T> TypeInfo<T>() =>
        QmpJsonContext.Default.GetTypeInfo(typeof(T)) as JsonTypeInfo<T>
        ?? throw new InvalidOperationException(
            $"{typeof(T)} is not in QmpJsonContext: pass its JsonTypeInfo to ExecuteAsync");

    private async Task<QmpResponse> SendAsync(string command, JsonElement arguments, bool oob, CancellationToken cancellationToken)
    {
        ArgumentException.ThrowIfNullOrEmpty(command);
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        var id = Interlocked.Increment(ref _nextId);
        var pending = new PendingCommand(command);
        _pending[id] = pending;
        if (Volatile.Read(ref _closedBecause) is { } closed && _pending.TryRemove(id, out _))
        {
            throw new QmpConnectionClosedException($"cannot send {command}: {closed.Message}", closed);
        }
        using var registration = cancellationToken.Register(() =>
        {
            if (_pending.TryRemove(id, out var p))
            {
                p.Completion.TrySetCanceled(cancellationToken);
            }
        });

        try
        {
            var idElement = JsonSerializer.SerializeToElement(id, QmpLongInfo);
            var bytes = QmpWire.Command(command, arguments, idElement, oob);
            await _writer.WriteRawAsync(bytes, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            _pending.TryRemove(id, out _);
            throw new QmpConnectionClosedException($"cannot send {command}: {ex.Message}", ex);
        }

        var response = await pending.Completion.Task.ConfigureAwait(false);
        if (response.IsError)
        {
            throw new QmpException(response.Error, command, response.Id);
        }

        return response;
    }

    private static JsonTypeInfo<long> QmpLongInfo => ClientJsonContext.Default.Int64;

    // ------------------------------------------------------------------ events

    /// <summary>
    /// Subscribes to the events received from now on (optionally only those matching <paramref name="filter"/>).
    /// Dispose the subscription to stop.
    /// </summary>
    public QmpEventSubscription SubscribeEvents(Func<QmpEvent, bool>? filter = null)
    {
        var sub = new QmpEventSubscription(filter, Unsubscribe);
        lock (_subscriptionsLock)
        {
            if (_closedBecause is not null)
            {
                sub.Complete(null);
            }
            else
            {
                _subscriptions.Add(sub);
            }
        }

        return sub;
    }

    /// <summary>The events received from the start of the enumeration until the connection ends.</summary>
    public async IAsyncEnumerable<QmpEvent> ReadEventsAsync([EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        using var sub = SubscribeEvents();
        await foreach (var e in sub.WithCancellation(cancellationToken).ConfigureAwait(false))
        {
            yield return e;
        }
    }

    /// <summary>The events, as <see cref="ReadEventsAsync"/>.</summary>
    public IAsyncEnumerable<QmpEvent> Events => ReadEventsAsync();

    /// <summary>
    /// Waits for an event received from now on that matches <paramref name="predicate"/>.
    /// To catch events a command causes, subscribe (<see cref="SubscribeEvents"/>) before sending it.
    /// </summary>
    public async Task<QmpEvent> WaitForEventAsync(Func<QmpEvent, bool> predicate, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        using var sub = SubscribeEvents();
        return await sub.WaitAsync(predicate, timeout, cancellationToken).ConfigureAwait(false);
    }

    private void Unsubscribe(QmpEventSubscription sub)
    {
        lock (_subscriptionsLock)
        {
            _subscriptions.Remove(sub);
        }
    }

    // ------------------------------------------------------------------ the read loop

    private async Task ReadLoopAsync()
    {
        Exception? error = null;
        try
        {
            while (true)
            {
                using var frame = await _reader.ReadAsync(_shutdown.Token).ConfigureAwait(false);
                if (frame is null)
                {
                    break;
                }

                if (frame.IsError)
                {
                    continue; // not JSON: nothing a client can do with it
                }

                Dispatch(frame.Root);
            }
        }
        catch (OperationCanceledException) when (_shutdown.IsCancellationRequested)
        {
        }
        catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException or InvalidOperationException)
        {
            error = ex;
        }

        var closed = error is null
            ? new QmpConnectionClosedException("the QMP server closed the connection")
            : new QmpConnectionClosedException($"the QMP connection failed: {error.Message}", error);
        Volatile.Write(ref _closedBecause, closed);
        foreach (var id in _pending.Keys)
        {
            if (_pending.TryRemove(id, out var p))
            {
                p.Completion.TrySetException(closed);
            }
        }

        List<QmpEventSubscription> subs;
        lock (_subscriptionsLock)
        {
            subs = [.. _subscriptions];
            _subscriptions.Clear();
        }

        foreach (var sub in subs)
        {
            sub.Complete(null);
        }
    }

    private void Dispatch(JsonElement message)
    {
        switch (QmpMessage.Classify(message))
        {
            case QmpMessageKind.Event:
                var e = QmpEvent.Parse(message);
                lock (_subscriptionsLock)
                {
                    foreach (var sub in _subscriptions)
                    {
                        sub.Post(e);
                    }
                }

                break;
            case QmpMessageKind.Return:
            case QmpMessageKind.Error:
                var response = QmpResponse.Parse(message);
                if (FindPending(response) is { } p)
                {
                    p.Completion.TrySetResult(response);
                }

                break;
        }
    }

    private PendingCommand? FindPending(QmpResponse response)
    {
        if (response.Id is { ValueKind: JsonValueKind.Number } id && id.TryGetInt64(out var n))
        {
            return _pending.TryRemove(n, out var p) ? p : null;
        }

        // No id: the server could not read a request (or dropped its id). Replies come in
        // order, so it belongs to the oldest request still waiting.
        if (_pending.IsEmpty)
        {
            return null;
        }

        var oldest = _pending.Keys.Min();
        return _pending.TryRemove(oldest, out var q) ? q : null;
    }

    // ------------------------------------------------------------------ disposal

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        await _shutdown.CancelAsync().ConfigureAwait(false);
        try
        {
            _stream.Dispose();
        }
        catch (IOException)
        {
        }

        try
        {
            await _readLoop.ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or OperationCanceledException or ObjectDisposedException)
        {
        }

        await _pipeReader.CompleteAsync().ConfigureAwait(false);
        await _pipeWriter.CompleteAsync().ConfigureAwait(false);
        _writer.Dispose();
        _shutdown.Dispose();
    }

    public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();

    private sealed class PendingCommand(string command)
    {
        public string Command { get; } = command;

        public TaskCompletionSource<QmpResponse> Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }
}
