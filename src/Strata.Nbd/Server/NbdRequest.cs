using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Text;
using Strata.Images.Format;
using Strata.Nbd.MetaContexts;
using Strata.Nbd.Protocol;

namespace Strata.Nbd.Server;

/// <summary>
/// One request in flight and the reply it builds, pooled per connection. The reply is a list of parts: bytes of
/// <see cref="Head"/> (headers, block status, error messages) or of <see cref="Data"/> (read payload), in wire order.
/// The connection returns <see cref="Data"/> to the pool once the writer has sent the reply.
/// </summary>
internal sealed class NbdRequest
{
    private const int InitialHeadSize = 256;
    private const int MaxRetainedHeadSize = 64 * 1024;

    private readonly NbdConnection _connection;
    private readonly Action _onRunCompleted;
    private ConfiguredValueTaskAwaitable.ConfiguredValueTaskAwaiter _awaiter;
    private byte[] _head = new byte[InitialHeadSize];
    private int _headLength;
    private ReplyPart[] _parts = new ReplyPart[4];

    public NbdRequest(NbdConnection connection)
    {
        _connection = connection;
        _onRunCompleted = OnRunCompleted;
    }

    public ushort Flags;
    public ushort Type;
    public ulong Cookie;
    public ulong Offset;
    public uint Length;

    /// <summary>Payload: read data or write data (pooled), or null.</summary>
    public byte[]? Data;

    public NbdExtentSink Sink { get; } = new();

    public ReadOnlySpan<byte> Head => _head.AsSpan(0, _headLength);

    public int PartCount { get; private set; }

    public ref readonly ReplyPart Part(int index) => ref _parts[index];

    public byte[] HeadArray => _head;

    /// <summary>Runs the request without a thread hop; its reply is queued to the writer when done.</summary>
    public void Start()
    {
        // The awaiter is consumed exactly once, in OnRunCompleted (what `await` would do), returning the pooled box.
#pragma warning disable CA2012
        _awaiter = RunAsync().ConfigureAwait(false).GetAwaiter();
#pragma warning restore CA2012
        if (_awaiter.IsCompleted)
            OnRunCompleted();
        else
            _awaiter.UnsafeOnCompleted(_onRunCompleted);
    }

    private void OnRunCompleted()
    {
        var awaiter = _awaiter;
        _awaiter = default;
        try
        {
            awaiter.GetResult();
        }
        catch (Exception e)
        {
            // RunAsync handles its own failures; keep the connection consistent whatever happens.
            _connection.OnRequestFault(e);
        }
        _connection.Complete(this);
    }

    /// <summary>Back to the pool: drop the payload buffer and the reply.</summary>
    public void Reset()
    {
        if (Data != null)
        {
            ArrayPool<byte>.Shared.Return(Data);
            Data = null;
        }
        _headLength = 0;
        PartCount = 0;
        if (_head.Length > MaxRetainedHeadSize)
            _head = new byte[InitialHeadSize];
    }

    // ------------------------------------------------------------------ handling (QEMU 7.2's nbd_co_receive_request + nbd_handle_request)

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask RunAsync()
    {
        var export = _connection.Export!;
        try
        {
            string? invalid = Validate(export);
            if (invalid != null)
            {
                AddError(NbdError.EINVAL, invalid);
                return;
            }
            var image = export.Image;
            switch ((NbdCommand)Type)
            {
                case NbdCommand.Read:
                    await ReadAsync(export, image).ConfigureAwait(false);
                    break;
                case NbdCommand.Write:
                    await RunAsync(image.WriteAsync(Data.AsMemory(0, (int)Length), (long)Offset, (Flags & (ushort)NbdCommandFlags.Fua) != 0 ? WriteFlags.Fua : WriteFlags.None), "writing to file failed").ConfigureAwait(false);
                    break;
                case NbdCommand.WriteZeroes:
                    await WriteZeroesAsync(image).ConfigureAwait(false);
                    break;
                case NbdCommand.Flush:
                    await RunAsync(image.FlushAsync(), "flush failed").ConfigureAwait(false);
                    break;
                case NbdCommand.Trim:
                    await TrimAsync(image).ConfigureAwait(false);
                    break;
                case NbdCommand.Cache:
                    await CacheAsync(image).ConfigureAwait(false);
                    break;
                case NbdCommand.BlockStatus:
                    await BlockStatusAsync(export).ConfigureAwait(false);
                    break;
                default:
                    AddError(NbdError.EINVAL, $"invalid request type ({Type}) received");
                    break;
            }
        }
        catch (Exception e)
        {
            // Failures of image calls are answered where they happen; this is a last resort.
            PartCount = 0;
            _headLength = 0;
            AddError(NbdErrors.FromException(e), "request failed");
        }
    }

    /// <summary>The checks QEMU makes before running a request; the message of the EINVAL reply, or null.</summary>
    private string? Validate(NbdExport export)
    {
        var type = (NbdCommand)Type;
        if (type is NbdCommand.Read or NbdCommand.Write or NbdCommand.Cache && Length > NbdConstants.MaxBufferSize)
            return $"len ({Length} ) is larger than max len ({NbdConstants.MaxBufferSize})";
        if (!export.Writable && type is NbdCommand.Write or NbdCommand.WriteZeroes or NbdCommand.Trim)
            return "Export is read-only";
        ulong size = (ulong)export.Size;
        if (Offset > size || Length > size - Offset)
            return $"operation past EOF; From: {Offset}, Len: {Length}, Size: {size}";
        var valid = NbdCommandFlags.Fua;
        if (type == NbdCommand.Read && _connection.Structured)
            valid |= NbdCommandFlags.DontFragment;
        else if (type == NbdCommand.WriteZeroes)
            valid |= NbdCommandFlags.NoHole | NbdCommandFlags.FastZero;
        else if (type == NbdCommand.BlockStatus)
            valid |= NbdCommandFlags.ReqOne;
        if ((Flags & ~(ushort)valid) != 0)
            return $"unsupported flags for command {NbdNames.Command(Type)} (got 0x{Flags:x})";
        return null;
    }

    /// <summary>Awaits an image call and answers with a simple reply, or an error with <paramref name="failure"/>.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask RunAsync(ValueTask operation, string failure)
    {
        try
        {
            await operation.ConfigureAwait(false);
        }
        catch (Exception e)
        {
            AddError(NbdErrors.FromException(e), failure);
            return;
        }
        AddSimple(NbdError.Success);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ReadAsync(NbdExport export, IImage image)
    {
        long offset = (long)Offset;
        int length = (int)Length;
        if ((Flags & (ushort)NbdCommandFlags.Fua) != 0)
        {
            try
            {
                await image.FlushAsync().ConfigureAwait(false);
            }
            catch (Exception e)
            {
                AddError(NbdErrors.FromException(e), "flush failed");
                return;
            }
        }
        if (length > 0)
            Data = ArrayPool<byte>.Shared.Rent(length);

        bool structured = _connection.Structured;
        if (structured && (Flags & (ushort)NbdCommandFlags.DontFragment) == 0 && length > 0)
        {
            // Sparse read: one chunk per block-status run, holes without payload.
            int progress = 0;
            while (progress < length)
            {
                ChainExtent e;
                try
                {
                    e = await export.Chain.GetAsync(image, offset + progress, length - progress, wantZero: true, default).ConfigureAwait(false);
                }
                catch (Exception ex)
                {
                    var err = NbdErrors.FromException(ex);
                    AddError(err, "unable to check for holes: " + NbdErrors.Describe(err));
                    return;
                }
                int n = (int)e.Length;
                bool final = progress + n == length;
                if (e.Zero)
                {
                    AddHoleChunk(final, (ulong)(offset + progress), (uint)n);
                }
                else
                {
                    try
                    {
                        await image.ReadAsync(Data.AsMemory(progress, n), offset + progress).ConfigureAwait(false);
                    }
                    catch (Exception ex)
                    {
                        // QEMU drops the connection here; an error chunk ends the reply just as well.
                        AddError(NbdErrors.FromException(ex), "reading from file failed");
                        return;
                    }
                    AddDataChunk(final, (ulong)(offset + progress), progress, n);
                }
                progress += n;
            }
            return;
        }

        if (length > 0)
        {
            try
            {
                await image.ReadAsync(Data.AsMemory(0, length), offset).ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                AddError(NbdErrors.FromException(ex), "reading from file failed");
                return;
            }
        }
        if (structured)
        {
            if (length > 0)
                AddDataChunk(true, Offset, 0, length);
            else
                AddChunkHeader(NbdReplyFlags.Done, NbdReplyType.None, 0);
        }
        else
        {
            AddSimple(NbdError.Success);
            if (length > 0)
                AddDataPart(0, length);
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteZeroesAsync(IImage image)
    {
        var flags = ZeroFlags.None;
        if ((Flags & (ushort)NbdCommandFlags.Fua) != 0)
            flags |= ZeroFlags.Fua;
        if ((Flags & (ushort)NbdCommandFlags.NoHole) == 0)
            flags |= ZeroFlags.MayUnmap;
        if ((Flags & (ushort)NbdCommandFlags.FastZero) != 0)
            flags |= ZeroFlags.NoFallback;
        if (Length == 0)
        {
            AddSimple(NbdError.Success);
            return;
        }
        await RunAsync(image.WriteZeroesAsync((long)Offset, Length, flags), "writing to file failed").ConfigureAwait(false);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask TrimAsync(IImage image)
    {
        try
        {
            if (Length > 0)
                await image.DiscardAsync((long)Offset, Length).ConfigureAwait(false);
            if ((Flags & (ushort)NbdCommandFlags.Fua) != 0)
                await image.FlushAsync().ConfigureAwait(false);
        }
        catch (Exception e)
        {
            AddError(NbdErrors.FromException(e), "discard failed");
            return;
        }
        AddSimple(NbdError.Success);
    }

    /// <summary>
    /// QEMU prefetches with copy-on-read (bdrv_co_do_copy_on_readv): the request is widened to whole clusters, and each
    /// run the top layer does not allocate is read through the chain in pieces of up to 16 MiB and written into the top
    /// layer — as zeroes when the piece reads as zeroes, else as data. Read-only images are left alone.
    /// </summary>
    private async ValueTask CacheAsync(IImage image)
    {
        const int MaxPiece = 16 << 20; // QEMU's MAX_BOUNCE_BUFFER
        try
        {
            if (!image.IsReadOnly && Length > 0)
            {
                long granularity = Math.Max(1, image.AllocationGranularity);
                long pos = (long)Offset / granularity * granularity;
                long end = Math.Min(image.Size, ((long)Offset + Length + granularity - 1) / granularity * granularity);
                while (pos < end)
                {
                    var s = await image.GetBlockStatusAsync(pos, end - pos).ConfigureAwait(false);
                    long n = Math.Clamp(s.Length, 1, end - pos);
                    if (s.State == BlockState.Unallocated)
                    {
                        for (long done = 0; done < n;)
                        {
                            int piece = (int)Math.Min(n - done, MaxPiece);
                            if (Data == null || Data.Length < piece)
                            {
                                if (Data != null)
                                    ArrayPool<byte>.Shared.Return(Data);
                                Data = null;
                                Data = ArrayPool<byte>.Shared.Rent(piece);
                            }
                            var buffer = Data.AsMemory(0, piece);
                            await image.ReadAsync(buffer, pos + done).ConfigureAwait(false);
                            if (buffer.Span.ContainsAnyExcept((byte)0))
                                await image.WriteAsync(buffer, pos + done).ConfigureAwait(false);
                            else
                                await image.WriteZeroesAsync(pos + done, piece).ConfigureAwait(false);
                            done += piece;
                        }
                    }
                    pos += n;
                }
            }
        }
        catch (Exception e)
        {
            AddError(NbdErrors.FromException(e), "caching data failed");
            return;
        }
        AddSimple(NbdError.Success);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask BlockStatusAsync(NbdExport export)
    {
        if (Length == 0)
        {
            AddError(NbdError.EINVAL, "need non-zero length");
            return;
        }
        var selected = _connection.SelectedContexts;
        int remaining = _connection.SelectedContextCount;
        if (remaining == 0 || selected == null)
        {
            AddError(NbdError.EINVAL, "CMD_BLOCK_STATUS not negotiated");
            return;
        }
        int capacity = (Flags & (ushort)NbdCommandFlags.ReqOne) != 0 ? 1 : NbdConstants.MaxBlockStatusExtents;
        for (int id = 0; id < selected.Length; id++)
        {
            if (!selected[id])
                continue;
            var provider = export.ContextsById[id]!;
            Sink.Reset(capacity);
            try
            {
                await provider.GetExtentsAsync((long)Offset, Length, Sink, default).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                AddError(NbdErrors.FromException(e), "can't get block status");
                return;
            }
            AddBlockStatusChunk(--remaining == 0, (uint)id, Sink);
        }
    }

    // ------------------------------------------------------------------ reply building

    private Span<byte> AppendHead(int length)
    {
        if (_headLength + length > _head.Length)
            Array.Resize(ref _head, Math.Max(_head.Length * 2, _headLength + length));
        var span = _head.AsSpan(_headLength, length);
        if (PartCount > 0 && _parts[PartCount - 1] is { FromData: false } last && last.Offset + last.Length == _headLength)
        {
            _parts[PartCount - 1] = last with { Length = last.Length + length };
        }
        else
        {
            AddPart(new ReplyPart(_headLength, length, FromData: false));
        }
        _headLength += length;
        return span;
    }

    private void AddPart(ReplyPart part)
    {
        if (PartCount == _parts.Length)
            Array.Resize(ref _parts, _parts.Length * 2);
        _parts[PartCount++] = part;
    }

    private void AddDataPart(int offset, int length) => AddPart(new ReplyPart(offset, length, FromData: true));

    private void AddSimple(NbdError error)
    {
        var s = AppendHead(NbdConstants.SimpleReplyHeaderSize);
        BinaryPrimitives.WriteUInt32BigEndian(s, NbdConstants.SimpleReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(s[4..], (uint)error);
        BinaryPrimitives.WriteUInt64BigEndian(s[8..], Cookie);
    }

    private Span<byte> AddChunkHeader(NbdReplyFlags flags, NbdReplyType type, int payloadLength)
    {
        var s = AppendHead(NbdConstants.StructuredReplyHeaderSize + payloadLength);
        BinaryPrimitives.WriteUInt32BigEndian(s, NbdConstants.StructuredReplyMagic);
        BinaryPrimitives.WriteUInt16BigEndian(s[4..], (ushort)flags);
        BinaryPrimitives.WriteUInt16BigEndian(s[6..], (ushort)type);
        BinaryPrimitives.WriteUInt64BigEndian(s[8..], Cookie);
        BinaryPrimitives.WriteUInt32BigEndian(s[16..], (uint)payloadLength);
        return s[NbdConstants.StructuredReplyHeaderSize..];
    }

    private void AddDataChunk(bool final, ulong offset, int dataOffset, int length)
    {
        // The header announces 8 + length bytes, of which only the offset is in Head.
        var s = AppendHead(NbdConstants.StructuredReplyHeaderSize + 8);
        BinaryPrimitives.WriteUInt32BigEndian(s, NbdConstants.StructuredReplyMagic);
        BinaryPrimitives.WriteUInt16BigEndian(s[4..], (ushort)(final ? NbdReplyFlags.Done : NbdReplyFlags.None));
        BinaryPrimitives.WriteUInt16BigEndian(s[6..], (ushort)NbdReplyType.OffsetData);
        BinaryPrimitives.WriteUInt64BigEndian(s[8..], Cookie);
        BinaryPrimitives.WriteUInt32BigEndian(s[16..], (uint)(8 + length));
        BinaryPrimitives.WriteUInt64BigEndian(s[20..], offset);
        AddDataPart(dataOffset, length);
    }

    private void AddHoleChunk(bool final, ulong offset, uint length)
    {
        var p = AddChunkHeader(final ? NbdReplyFlags.Done : NbdReplyFlags.None, NbdReplyType.OffsetHole, 12);
        BinaryPrimitives.WriteUInt64BigEndian(p, offset);
        BinaryPrimitives.WriteUInt32BigEndian(p[8..], length);
    }

    private void AddBlockStatusChunk(bool final, uint contextId, NbdExtentSink sink)
    {
        var p = AddChunkHeader(final ? NbdReplyFlags.Done : NbdReplyFlags.None, NbdReplyType.BlockStatus, 4 + 8 * sink.Count);
        BinaryPrimitives.WriteUInt32BigEndian(p, contextId);
        sink.Encode(p[4..]);
    }

    /// <summary>An error: a structured ERROR chunk (DONE) once structured replies are on, else a simple reply.</summary>
    private void AddError(NbdError error, string message)
    {
        if (!_connection.Structured)
        {
            AddSimple(error);
            return;
        }
        int length = Math.Min(Encoding.UTF8.GetByteCount(message), NbdConstants.MaxStringSize - 1);
        var p = AddChunkHeader(NbdReplyFlags.Done, NbdReplyType.Error, 6 + length);
        BinaryPrimitives.WriteUInt32BigEndian(p, (uint)error);
        BinaryPrimitives.WriteUInt16BigEndian(p[4..], (ushort)length);
        if (length == message.Length)
            Encoding.UTF8.GetBytes(message, p[6..]);
        else
            Encoding.UTF8.GetBytes(message).AsSpan(0, length).CopyTo(p[6..]);
    }
}

/// <param name="Offset">Start in <see cref="NbdRequest.Head"/> or <see cref="NbdRequest.Data"/>.</param>
internal readonly record struct ReplyPart(int Offset, int Length, bool FromData);
