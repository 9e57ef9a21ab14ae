using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using Microsoft.Extensions.Logging;
using Strata.Nbd.Protocol;

namespace Strata.Nbd.Server;

/// <summary>Transmission phase: the request loop, in-flight accounting and the request pool.</summary>
internal sealed partial class NbdConnection
{
    /// <summary>WRITE payloads at least this large and not yet buffered are received straight into their own buffer.</summary>
    private const int DirectPayloadThreshold = 64 * 1024;

    private readonly SemaphoreSlim _slots;
    private readonly Stack<NbdRequest> _pool = new();
    private ReplyWriter? _writer;

    public bool Structured => _structured;

    /// <summary>Contexts selected by SET_META_CONTEXT for this export, by id (null: none).</summary>
    public bool[]? SelectedContexts => _metaSelected;

    public int SelectedContextCount => _metaCount;

    private readonly record struct RequestHeader(uint Magic, ushort Flags, ushort Type, ulong Cookie, ulong Offset, uint Length);

    private async Task TransmitAsync()
    {
        _log.LogDebug("NBD client {Peer} uses export '{Export}' (structured replies: {Structured})", _peer, _export!.Name, _structured);
        _writer = new ReplyWriter(_socket, this);
        var ct = _cts.Token;
        var reader = _reader;
        while (true)
        {
            if (ct.IsCancellationRequested)
                return;
            // No token here (a registration per read): RequestStop cancels the pending read instead.
            var result = await reader.ReadAsync().ConfigureAwait(false);
            if (result.IsCanceled)
                return;
            var buffer = result.Buffer;
            bool stop = false;
            NbdRequest? direct = null;
            // Replies of requests answered while this buffer is parsed leave together, after it.
            bool corked = buffer.Length >= NbdConstants.RequestHeaderSize && _writer.TryCork();
            while (buffer.Length >= NbdConstants.RequestHeaderSize)
            {
                var h = ParseHeader(buffer);
                if (h.Magic != NbdConstants.RequestMagic)
                {
                    _log.LogInformation("NBD client {Peer}: Disconnect client, due to: invalid magic (got 0x{Magic:x})", _peer, h.Magic);
                    stop = true;
                    break;
                }
                if (h.Type == (ushort)NbdCommand.Disconnect)
                {
                    buffer = buffer.Slice(NbdConstants.RequestHeaderSize);
                    stop = true;
                    break;
                }
                long need = NbdConstants.RequestHeaderSize;
                bool oversizedWrite = false;
                if (h.Type == (ushort)NbdCommand.Write)
                {
                    if (h.Length > NbdConstants.MaxBufferSize)
                        oversizedWrite = true; // answered with EINVAL, then the connection ends (payload not read)
                    else
                        need += h.Length;
                }
                bool partialPayload = buffer.Length < need;
                if (partialPayload && h.Length < DirectPayloadThreshold)
                    break; // wait for the rest of a small payload

                if (!_slots.Wait(0))
                {
                    if (corked)
                    {
                        _writer.Uncork();
                        corked = false;
                    }
                    try
                    {
                        await _slots.WaitAsync(ct).ConfigureAwait(false);
                    }
                    catch (OperationCanceledException)
                    {
                        stop = true;
                        break;
                    }
                }
                var request = Rent(h);
                if (oversizedWrite)
                {
                    buffer = buffer.Slice(NbdConstants.RequestHeaderSize);
                    request.Start();
                    _log.LogInformation("NBD client {Peer}: Disconnect client, due to: Request handling failed in intermediate state", _peer);
                    stop = true;
                    break;
                }
                if (h.Type == (ushort)NbdCommand.Write && h.Length > 0)
                {
                    request.Data = ArrayPool<byte>.Shared.Rent((int)h.Length);
                    var available = buffer.Slice(NbdConstants.RequestHeaderSize, Math.Min(h.Length, buffer.Length - NbdConstants.RequestHeaderSize));
                    available.CopyTo(request.Data);
                    if (partialPayload)
                    {
                        buffer = buffer.Slice(buffer.End);
                        direct = request;
                        _directHave = (int)available.Length;
                        break;
                    }
                }
                buffer = buffer.Slice(need);
                request.Start();
            }
            if (corked)
                _writer.Uncork();
            reader.AdvanceTo(buffer.Start, buffer.End);

            if (direct != null)
            {
                // The pipe holds nothing more (the payload runs past what was buffered): read the rest straight
                // from the socket into the request's buffer.
                try
                {
                    await ReadStreamExactAsync(direct.Data.AsMemory(_directHave, (int)direct.Length - _directHave), ct).ConfigureAwait(false);
                }
                catch (Exception e) when (e is OperationCanceledException or EndOfStreamException or IOException)
                {
                    Release(direct);
                    return;
                }
                direct.Start();
                continue;
            }
            if (stop || result.IsCompleted || result.IsCanceled)
                return;
        }
    }

    private int _directHave;

    private async ValueTask ReadStreamExactAsync(Memory<byte> destination, CancellationToken ct)
    {
        while (destination.Length > 0)
        {
            int n = await _stream.ReadAsync(destination, ct).ConfigureAwait(false);
            if (n == 0)
                throw new EndOfStreamException("Unexpected end-of-file before all data were read");
            destination = destination[n..];
        }
    }

    private static RequestHeader ParseHeader(in ReadOnlySequence<byte> buffer)
    {
        var first = buffer.FirstSpan;
        if (first.Length >= NbdConstants.RequestHeaderSize)
            return Decode(first);
        Span<byte> header = stackalloc byte[NbdConstants.RequestHeaderSize];
        var reader = new SequenceReader<byte>(buffer);
        reader.TryCopyTo(header);
        return Decode(header);

        static RequestHeader Decode(ReadOnlySpan<byte> s) => new(
            BinaryPrimitives.ReadUInt32BigEndian(s),
            BinaryPrimitives.ReadUInt16BigEndian(s[4..]),
            BinaryPrimitives.ReadUInt16BigEndian(s[6..]),
            BinaryPrimitives.ReadUInt64BigEndian(s[8..]),
            BinaryPrimitives.ReadUInt64BigEndian(s[16..]),
            BinaryPrimitives.ReadUInt32BigEndian(s[24..]));
    }

    private NbdRequest Rent(in RequestHeader h)
    {
        NbdRequest? request;
        lock (_pool)
            _pool.TryPop(out request);
        request ??= new NbdRequest(this);
        request.Flags = h.Flags;
        request.Type = h.Type;
        request.Cookie = h.Cookie;
        request.Offset = h.Offset;
        request.Length = h.Length;
        return request;
    }

    /// <summary>A request has its reply: hand it to the writer.</summary>
    public void Complete(NbdRequest request) => _writer!.Enqueue(request);

    /// <summary>The reply was sent (or can no longer be): recycle the request and free its slot.</summary>
    public void Release(NbdRequest request)
    {
        request.Reset();
        lock (_pool)
            _pool.Push(request);
        _slots.Release();
    }

    public void OnRequestFault(Exception e) => _log.LogError(e, "NBD client {Peer}: request failed unexpectedly", _peer);

    public void OnSendFailed(Exception e)
    {
        _log.LogDebug("NBD client {Peer}: Disconnect client, due to: Failed to send reply: {Message}", _peer, e.Message);
        Abort();
    }
}
