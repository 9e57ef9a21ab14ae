using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Strata.Nbd.Protocol;

namespace Strata.Nbd.Server;

/// <summary>
/// One client: the handshake (NbdConnection.Handshake.cs), then transmission (NbdConnection.Transmission.cs):
/// requests parsed in place from a <see cref="PipeReader"/>, run concurrently, answered by one <see cref="ReplyWriter"/>.
/// </summary>
internal sealed partial class NbdConnection
{
    private readonly NbdServer _server;
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly PipeReader _reader;
    private readonly CancellationTokenSource _cts = new();
    private readonly TaskCompletionSource _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly ILogger _log;
    private readonly string _peer;
    private int _aborted;

    public NbdConnection(NbdServer server, Socket socket)
    {
        _server = server;
        _socket = socket;
        _log = server.Logger;
        _peer = DescribePeer(socket);
        if (socket.AddressFamily is AddressFamily.InterNetwork or AddressFamily.InterNetworkV6)
            socket.NoDelay = true;
        _stream = new NetworkStream(socket, ownsSocket: false);
        int bufferSize = server.Options.ReceiveBufferSize;
        _reader = PipeReader.Create(_stream, new StreamPipeReaderOptions(
            pool: server.ReceivePool, bufferSize: bufferSize, minimumReadSize: Math.Min(bufferSize, 16 * 1024), leaveOpen: true));
        _slots = new SemaphoreSlim(server.Options.MaxRequestsPerConnection, server.Options.MaxRequestsPerConnection);
    }

    /// <summary>Completes when the connection is closed and nothing of it runs any more.</summary>
    public Task Completion => _completion.Task;

    /// <summary>The export in transmission, once negotiated.</summary>
    public NbdExport? Export => _export;

    public void Start() => _ = RunAsync();

    /// <summary>Stop reading requests; finish and answer those received, then close.</summary>
    public void RequestStop()
    {
        try
        {
            _cts.Cancel();
            _reader.CancelPendingRead();
        }
        catch (ObjectDisposedException)
        {
        }
        catch (InvalidOperationException)
        {
            // The reader is already completed.
        }
    }

    /// <summary>Cut the connection now (QEMU's client_close); requests running against the image still finish.</summary>
    public void Abort()
    {
        Interlocked.Exchange(ref _aborted, 1);
        RequestStop();
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (SocketException)
        {
        }
        catch (ObjectDisposedException)
        {
        }
    }

    private async Task RunAsync()
    {
        await Task.Yield();
        _log.LogDebug("NBD client {Peer} connected", _peer);
        try
        {
            if (await NegotiateAsync().ConfigureAwait(false))
                await TransmitAsync().ConfigureAwait(false);
        }
        catch (NbdProtocolException e)
        {
            _log.LogInformation("NBD client {Peer}: {Message}", _peer, e.Message);
        }
        catch (Exception e) when (e is OperationCanceledException or EndOfStreamException or IOException or SocketException or ObjectDisposedException)
        {
            _log.LogDebug("NBD client {Peer} gone: {Message}", _peer, e.Message);
        }
        catch (Exception e)
        {
            _log.LogError(e, "NBD client {Peer}: unexpected failure", _peer);
        }
        finally
        {
            await CloseAsync().ConfigureAwait(false);
        }
    }

    private async Task CloseAsync()
    {
        try
        {
            // Every request received has been released once all slots are back: its image I/O is over and its
            // reply sent (or dropped with the socket).
            for (int i = 0; i < _server.Options.MaxRequestsPerConnection; i++)
                await _slots.WaitAsync().ConfigureAwait(false);
            _writer?.Dispose();
        }
        catch (Exception e)
        {
            _log.LogError(e, "NBD client {Peer}: failure while closing", _peer);
        }
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
        await _reader.CompleteAsync().ConfigureAwait(false);
        await _stream.DisposeAsync().ConfigureAwait(false);
        _socket.Dispose();
        _server.OnConnectionClosed(this, _export);
        _log.LogDebug("NBD client {Peer} closed", _peer);
        _completion.TrySetResult();
        _cts.Dispose();
    }

    private static string DescribePeer(Socket socket)
    {
        try
        {
            return socket.RemoteEndPoint?.ToString() is { Length: > 0 } s ? s : "unix socket client";
        }
        catch (SocketException)
        {
            return "client";
        }
    }

    // ------------------------------------------------------------------ handshake-phase I/O

    private readonly byte[] _scratch = new byte[8];
    private readonly ArrayBufferWriter<byte> _out = new(1024);

    /// <summary>Reads exactly <paramref name="destination"/>.Length bytes from the pipe.</summary>
    private async ValueTask ReadExactAsync(Memory<byte> destination)
    {
        while (destination.Length > 0)
        {
            var result = await _reader.ReadAsync(_cts.Token).ConfigureAwait(false);
            var buffer = result.Buffer;
            int n = (int)Math.Min(buffer.Length, destination.Length);
            buffer.Slice(0, n).CopyTo(destination.Span);
            destination = destination[n..];
            _reader.AdvanceTo(buffer.GetPosition(n));
            if (n == 0 && (result.IsCompleted || result.IsCanceled))
                throw new EndOfStreamException("Unexpected end-of-file before all data were read");
        }
    }

    private async ValueTask SkipAsync(long count)
    {
        while (count > 0)
        {
            var result = await _reader.ReadAsync(_cts.Token).ConfigureAwait(false);
            var buffer = result.Buffer;
            long n = Math.Min(buffer.Length, count);
            count -= n;
            _reader.AdvanceTo(buffer.GetPosition(n));
            if (n == 0 && (result.IsCompleted || result.IsCanceled))
                throw new EndOfStreamException("Unexpected end-of-file before all data were read");
        }
    }

    private async ValueTask<uint> ReadUInt32Async()
    {
        await ReadExactAsync(_scratch.AsMemory(0, 4)).ConfigureAwait(false);
        return System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(_scratch);
    }

    private async ValueTask<ulong> ReadUInt64Async()
    {
        await ReadExactAsync(_scratch.AsMemory(0, 8)).ConfigureAwait(false);
        return System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(_scratch);
    }

    /// <summary>Sends what the handshake has buffered.</summary>
    private async ValueTask FlushHandshakeAsync()
    {
        if (_out.WrittenCount == 0)
            return;
        await SendAllAsync(_socket, _out.WrittenMemory, _cts.Token).ConfigureAwait(false);
        _out.ResetWrittenCount();
    }

    internal static async ValueTask SendAllAsync(Socket socket, ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        while (data.Length > 0)
        {
            int n = await socket.SendAsync(data, SocketFlags.None, ct).ConfigureAwait(false);
            if (n <= 0)
                throw new IOException("The connection was closed while sending");
            data = data[n..];
        }
    }
}
