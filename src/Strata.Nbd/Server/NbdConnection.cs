using System.Buffers;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Strata.Nbd.Protocol;

namespace Strata.Nbd.Server;

/// <summary>
/// One client, on a thread of its own (<see cref="NbdSocket"/> says why): the handshake (NbdConnection.Handshake.cs),
/// then transmission (NbdConnection.Transmission.cs): requests parsed in place from the receive buffer, run
/// concurrently, answered by one <see cref="ReplyWriter"/>.
/// </summary>
internal sealed partial class NbdConnection
{
    private readonly NbdServer _server;
    private readonly Socket _socket;
    private readonly NbdSocket _io;
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
        _io = new NbdSocket(socket);
        _in = new byte[server.Options.ReceiveBufferSize];
        _slots = new SemaphoreSlim(server.Options.MaxRequestsPerConnection, server.Options.MaxRequestsPerConnection);
    }

    /// <summary>Completes when the connection is closed and nothing of it runs any more.</summary>
    public Task Completion => _completion.Task;

    private volatile bool _leaving;

    /// <summary>
    /// The client is gone or going: its request loop has ended, or it has closed its socket and the loop is about to
    /// see that. Such a connection closes without any help (its <see cref="Completion"/> follows soon).
    /// </summary>
    public bool IsLeaving => _leaving || _io.PeerHasClosed();

    /// <summary>The export in transmission, once negotiated.</summary>
    public NbdExport? Export => _export;

    public void Start() => new Thread(Run) { IsBackground = true, Name = "NBD client" }.Start();

    /// <summary>Stop reading requests; finish and answer those received, then close.</summary>
    public void RequestStop()
    {
        try
        {
            _cts.Cancel();
            // The connection's thread may wait in poll: the end of reading wakes it.
            _socket.Shutdown(SocketShutdown.Receive);
        }
        catch (ObjectDisposedException)
        {
        }
        catch (SocketException)
        {
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

    private void Run()
    {
        _log.LogDebug("NBD client {Peer} connected", _peer);
        try
        {
            if (Negotiate())
                ReceiveRequests();
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
            // Before the socket can close: IsLeaving looks at it only while this is false.
            _leaving = true;
            _ = CloseAsync();
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
            _io.Dispose();
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

    // ------------------------------------------------------------------ input and handshake-phase output

    // Received bytes not parsed yet: _in[_inStart.._inEnd).
    private byte[] _in;
    private int _inStart;
    private int _inEnd;

    private readonly byte[] _scratch = new byte[8];
    private readonly ArrayBufferWriter<byte> _out = new(1024);

    /// <summary>Receives more bytes behind those buffered (moving them to the front when room runs short); false at end of stream.</summary>
    private bool Fill(int room)
    {
        if (_inStart == _inEnd)
        {
            _inStart = _inEnd = 0;
        }
        else if (_in.Length - _inEnd < room)
        {
            _in.AsSpan(_inStart, _inEnd - _inStart).CopyTo(_in);
            _inEnd -= _inStart;
            _inStart = 0;
        }
        if (_in.Length - _inEnd < room)
            Array.Resize(ref _in, _inEnd + room); // a receive buffer configured smaller than one request
        int n = _io.Receive(_in.AsSpan(_inEnd));
        _inEnd += n;
        return n > 0;
    }

    /// <summary>Reads exactly <paramref name="destination"/>.Length bytes.</summary>
    private void ReadExact(Span<byte> destination)
    {
        while (destination.Length > 0)
        {
            if (_inStart == _inEnd && !Fill(1))
                throw new EndOfStreamException("Unexpected end-of-file before all data were read");
            int n = Math.Min(_inEnd - _inStart, destination.Length);
            _in.AsSpan(_inStart, n).CopyTo(destination);
            _inStart += n;
            destination = destination[n..];
        }
    }

    private void Skip(long count)
    {
        while (count > 0)
        {
            if (_inStart == _inEnd && !Fill(1))
                throw new EndOfStreamException("Unexpected end-of-file before all data were read");
            int n = (int)Math.Min(_inEnd - _inStart, count);
            _inStart += n;
            count -= n;
        }
    }

    private uint ReadUInt32()
    {
        ReadExact(_scratch.AsSpan(0, 4));
        return System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(_scratch);
    }

    private ulong ReadUInt64()
    {
        ReadExact(_scratch.AsSpan(0, 8));
        return System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(_scratch);
    }

    /// <summary>Sends what the handshake has buffered.</summary>
    private void FlushHandshake()
    {
        if (_out.WrittenCount == 0)
            return;
        _io.Send(_out.WrittenSpan);
        _out.ResetWrittenCount();
    }
}
