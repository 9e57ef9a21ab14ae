using System.Collections.Concurrent;

namespace Strata.Nbd.Server;

/// <summary>
/// Serialises the replies of one connection. Finished requests are queued; whichever thread finds the writer idle
/// becomes the writer (no hand-off to another thread): it takes every reply that is ready, gathers them into one send
/// (headers and small payloads copied into one buffer, large payloads sent from their own buffers), sends once,
/// releases those requests (and their buffers), and goes on while replies keep arriving. The request loop "corks" the
/// writer while it parses a received buffer, so that requests answered on the spot leave in one send.
/// A send waits (in poll) while the client's socket buffer is full: at most one thread per connection does, and the
/// request loop stops reading meanwhile when it is the writer, which is the back-pressure QEMU applies too.
/// </summary>
internal sealed class ReplyWriter
{
    private const int CopyThreshold = 16 * 1024;
    private const int MaxBatchBytes = 8 << 20;
    private const int MaxSegments = 256;

    private readonly NbdSocket _socket;
    private readonly NbdConnection _connection;
    private readonly ConcurrentQueue<NbdRequest> _queue = new();
    private readonly List<ArraySegment<byte>> _segments = [];
    private readonly List<NbdRequest> _batch = [];
    private byte[] _buffer = new byte[64 * 1024];
    private int _bufferLength;
    private int _segmentStart;
    private int _owned;        // 1 while a thread is the writer (or the request loop holds the cork)
    private volatile bool _dead;

    public ReplyWriter(NbdSocket socket, NbdConnection connection)
    {
        _socket = socket;
        _connection = connection;
    }

    /// <summary>Queues a finished request; sends at once if nobody else is writing.</summary>
    public void Enqueue(NbdRequest request)
    {
        if (_dead)
        {
            _connection.Release(request); // nobody will read the reply
            return;
        }
        _queue.Enqueue(request);
        if (_dead)
        {
            DrainDead();
            return;
        }
        if (Interlocked.CompareExchange(ref _owned, 1, 0) == 0)
            WriteLoop();
    }

    /// <summary>Holds replies back (the caller becomes the writer) until <see cref="Uncork"/>; false if another thread writes.</summary>
    public bool TryCork() => !_dead && Interlocked.CompareExchange(ref _owned, 1, 0) == 0;

    /// <summary>Sends what was held back and everything that follows, from the calling thread while it can.</summary>
    public void Uncork() => WriteLoop();

    /// <summary>Runs while this thread owns the writer.</summary>
    private void WriteLoop()
    {
        try
        {
            while (true)
            {
                long bytes = 0;
                while (bytes < MaxBatchBytes && _segments.Count < MaxSegments && _queue.TryDequeue(out var request))
                {
                    _batch.Add(request);
                    bytes += Append(request);
                }
                if (_batch.Count == 0)
                {
                    Volatile.Write(ref _owned, 0);
                    // A reply queued after the last look but before the release above would wait forever.
                    if (_queue.IsEmpty || Interlocked.CompareExchange(ref _owned, 1, 0) != 0)
                        return;
                    continue;
                }
                CloseSegment();
                Send();
                ReleaseBatch();
            }
        }
        catch (Exception e)
        {
            _dead = true;
            ReleaseBatch();
            DrainDead();
            _connection.OnSendFailed(e);
        }
    }

    private void DrainDead()
    {
        while (_queue.TryDequeue(out var request))
            _connection.Release(request);
    }

    private long Append(NbdRequest request)
    {
        long bytes = 0;
        for (int i = 0; i < request.PartCount; i++)
        {
            ref readonly var part = ref request.Part(i);
            byte[] source = part.FromData ? request.Data! : request.HeadArray;
            bytes += part.Length;
            if (part.FromData && part.Length > CopyThreshold)
            {
                CloseSegment();
                _segments.Add(new ArraySegment<byte>(source, part.Offset, part.Length));
                continue;
            }
            if (_bufferLength + part.Length > _buffer.Length)
            {
                // Segments already taken keep the old array alive until the send is done.
                CloseSegment();
                _buffer = new byte[Math.Max(_buffer.Length * 2, part.Length)];
                _bufferLength = 0;
                _segmentStart = 0;
            }
            source.AsSpan(part.Offset, part.Length).CopyTo(_buffer.AsSpan(_bufferLength));
            _bufferLength += part.Length;
        }
        return bytes;
    }

    private void CloseSegment()
    {
        if (_bufferLength > _segmentStart)
            _segments.Add(new ArraySegment<byte>(_buffer, _segmentStart, _bufferLength - _segmentStart));
        _segmentStart = _bufferLength;
    }

    private void Send()
    {
        if (_segments.Count == 1)
            _socket.Send(_segments[0].AsSpan());
        else if (_segments.Count > 1)
            _socket.Send(_segments);
    }

    private void ReleaseBatch()
    {
        foreach (var request in _batch)
            _connection.Release(request);
        _batch.Clear();
        _segments.Clear();
        _bufferLength = 0;
        _segmentStart = 0;
    }
}
