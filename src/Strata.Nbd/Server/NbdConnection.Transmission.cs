using System.Buffers;
using System.Buffers.Binary;
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

    /// <summary>
    /// The request loop, on the connection's thread: requests whose reply is ready at once are answered from it too,
    /// the others from the thread that finishes their I/O.
    /// </summary>
    private void ReceiveRequests()
    {
        _log.LogDebug("NBD client {Peer} uses export '{Export}' (structured replies: {Structured})", _peer, _export!.Name, _structured);
        var writer = _writer = new ReplyWriter(_io, this);
        var ct = _cts.Token;
        while (!ct.IsCancellationRequested)
        {
            bool stop = false;
            // Replies of requests answered while this buffer is parsed leave together, after it.
            bool corked = _inEnd - _inStart >= NbdConstants.RequestHeaderSize && writer.TryCork();
            while (_inEnd - _inStart >= NbdConstants.RequestHeaderSize)
            {
                var h = Decode(_in.AsSpan(_inStart));
                if (h.Magic != NbdConstants.RequestMagic)
                {
                    _log.LogInformation("NBD client {Peer}: Disconnect client, due to: invalid magic (got 0x{Magic:x})", _peer, h.Magic);
                    stop = true;
                    break;
                }
                if (h.Type == (ushort)NbdCommand.Disconnect)
                {
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
                bool partialPayload = _inEnd - _inStart < need;
                if (partialPayload && h.Length < DirectPayloadThreshold)
                    break; // wait for the rest of a small payload

                if (!_slots.Wait(0))
                {
                    if (corked)
                    {
                        writer.Uncork();
                        corked = false;
                    }
                    try
                    {
                        _slots.Wait(ct);
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
                    request.Start();
                    _log.LogInformation("NBD client {Peer}: Disconnect client, due to: Request handling failed in intermediate state", _peer);
                    stop = true;
                    break;
                }
                if (h.Type == (ushort)NbdCommand.Write && h.Length > 0)
                {
                    request.Data = ArrayPool<byte>.Shared.Rent((int)h.Length);
                    int have = (int)Math.Min(h.Length, _inEnd - _inStart - NbdConstants.RequestHeaderSize);
                    _in.AsSpan(_inStart + NbdConstants.RequestHeaderSize, have).CopyTo(request.Data);
                    if (partialPayload)
                    {
                        // The rest of a large payload goes straight from the socket into the request's buffer.
                        _inStart = _inEnd = 0;
                        if (corked)
                        {
                            writer.Uncork();
                            corked = false;
                        }
                        try
                        {
                            _io.ReceiveExact(request.Data.AsSpan(have, (int)h.Length - have));
                        }
                        catch
                        {
                            Release(request);
                            throw;
                        }
                        request.Start();
                        continue;
                    }
                }
                _inStart += (int)need;
                request.Start();
            }
            if (corked)
                writer.Uncork();
            if (stop || !Fill(DirectPayloadThreshold + NbdConstants.RequestHeaderSize))
                return;
        }
    }

    private static RequestHeader Decode(ReadOnlySpan<byte> s) => new(
        BinaryPrimitives.ReadUInt32BigEndian(s),
        BinaryPrimitives.ReadUInt16BigEndian(s[4..]),
        BinaryPrimitives.ReadUInt16BigEndian(s[6..]),
        BinaryPrimitives.ReadUInt64BigEndian(s[8..]),
        BinaryPrimitives.ReadUInt64BigEndian(s[16..]),
        BinaryPrimitives.ReadUInt32BigEndian(s[24..]));

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
