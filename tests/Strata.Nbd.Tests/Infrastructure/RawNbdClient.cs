using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Strata.Nbd.Tests.Infrastructure;

public sealed record OptionReply(uint Option, uint Type, byte[] Data)
{
    public bool IsError => (Type & 0x80000000) != 0;
    public string Text => Encoding.UTF8.GetString(Data);
    public ushort InfoType => BinaryPrimitives.ReadUInt16BigEndian(Data);
    public override string ToString() => $"opt {Option} type 0x{Type:x} len {Data.Length} {Convert.ToHexString(Data)}";
}

/// <summary>One reply: a simple reply (Type = -1) or one structured chunk.</summary>
public sealed record Reply(bool Simple, uint Error, ushort Flags, ushort Type, ulong Cookie, byte[] Payload)
{
    public bool Done => Simple || (Flags & 1) != 0;
    public ulong ChunkOffset => BinaryPrimitives.ReadUInt64BigEndian(Payload);
    public uint HoleLength => BinaryPrimitives.ReadUInt32BigEndian(Payload.AsSpan(8));
    public int DataLength => Payload.Length - 8;
    public uint ChunkError => BinaryPrimitives.ReadUInt32BigEndian(Payload);
    public string ErrorMessage => Encoding.UTF8.GetString(Payload, 6, BinaryPrimitives.ReadUInt16BigEndian(Payload.AsSpan(4)));
    public uint ContextId => BinaryPrimitives.ReadUInt32BigEndian(Payload);

    public (uint Length, uint Flags)[] Extents
    {
        get
        {
            var list = new (uint, uint)[(Payload.Length - 4) / 8];
            for (int i = 0; i < list.Length; i++)
                list[i] = (BinaryPrimitives.ReadUInt32BigEndian(Payload.AsSpan(4 + 8 * i)), BinaryPrimitives.ReadUInt32BigEndian(Payload.AsSpan(8 + 8 * i)));
            return list;
        }
    }

    public override string ToString() => Simple
        ? $"simple cookie {Cookie} error {Error} data {Payload.Length}"
        : Type switch
        {
            0 => $"none cookie {Cookie} flags {Flags}",
            1 => $"data cookie {Cookie} flags {Flags} offset {ChunkOffset} len {DataLength}",
            2 => $"hole cookie {Cookie} flags {Flags} offset {ChunkOffset} len {HoleLength}",
            5 => $"bs cookie {Cookie} flags {Flags} ctx {ContextId} [{string.Join(", ", Extents.Select(e => $"({e.Length},{e.Flags})"))}]",
            0x8001 => $"error cookie {Cookie} flags {Flags} errno {ChunkError} '{ErrorMessage}'",
            _ => $"chunk type {Type} cookie {Cookie} flags {Flags} len {Payload.Length}",
        };
}

/// <summary>A deliberately low-level NBD client for protocol tests: every byte is explicit.</summary>
public sealed class RawNbdClient : IAsyncDisposable
{
    public const ulong OptsMagic = 0x49484156454F5054;
    public const ulong InitMagic = 0x4e42444d41474943;
    public const ulong RepMagic = 0x0003e889045565a9;
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    private readonly Socket _socket;
    private readonly NetworkStream _stream;

    private RawNbdClient(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
    }

    public byte[] Greeting { get; private set; } = [];

    /// <summary>Set by <see cref="NegotiateAsync"/>: simple replies carry READ data of this many bytes.</summary>
    public Func<ulong, int> SimpleDataLength { get; set; } = _ => 0;

    public static async Task<RawNbdClient> ConnectAsync(EndPoint endPoint, uint? clientFlags = 3)
    {
        var socket = endPoint is UnixDomainSocketEndPoint
            ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
            : new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        using var cts = new CancellationTokenSource(Timeout);
        await socket.ConnectAsync(endPoint, cts.Token);
        var c = new RawNbdClient(socket);
        if (clientFlags is uint flags)
        {
            c.Greeting = await c.ReadExactAsync(18);
            await c.SendAsync(U32(flags));
        }
        return c;
    }

    public static Task<RawNbdClient> ConnectAsync(string socketPath, uint? clientFlags = 3) =>
        ConnectAsync(new UnixDomainSocketEndPoint(socketPath), clientFlags);

    public async Task<byte[]> ReadGreetingAsync()
    {
        Greeting = await ReadExactAsync(18);
        return Greeting;
    }

    // ------------------------------------------------------------------ raw I/O

    public async Task SendAsync(byte[] data)
    {
        using var cts = new CancellationTokenSource(Timeout);
        await _stream.WriteAsync(data, cts.Token);
    }

    public async Task<byte[]> ReadExactAsync(int count)
    {
        var buffer = new byte[count];
        using var cts = new CancellationTokenSource(Timeout);
        await _stream.ReadExactlyAsync(buffer, cts.Token);
        return buffer;
    }

    /// <summary>True when the server closes the connection (EOF or reset) before sending anything more.</summary>
    public async Task<bool> IsClosedAsync(TimeSpan? wait = null)
    {
        var buffer = new byte[1];
        using var cts = new CancellationTokenSource(wait ?? Timeout);
        try
        {
            return await _stream.ReadAsync(buffer, cts.Token) == 0;
        }
        catch (IOException)
        {
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    /// <summary>True when nothing arrives within <paramref name="wait"/> (and the connection is still open).</summary>
    public async Task<bool> IsSilentAsync(TimeSpan wait)
    {
        var buffer = new byte[1];
        using var cts = new CancellationTokenSource(wait);
        try
        {
            int n = await _stream.ReadAsync(buffer, cts.Token);
            return n < 0;
        }
        catch (OperationCanceledException)
        {
            return true;
        }
    }

    public static byte[] U32(uint v)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, v);
        return b;
    }

    public static byte[] U16(ushort v)
    {
        var b = new byte[2];
        BinaryPrimitives.WriteUInt16BigEndian(b, v);
        return b;
    }

    public static byte[] Str(string s) => Encoding.UTF8.GetBytes(s);

    public static byte[] Cat(params byte[][] parts) => parts.SelectMany(p => p).ToArray();

    // ------------------------------------------------------------------ options

    public Task SendOptionAsync(uint option, byte[]? data = null) => SendOptionAsync(option, data ?? [], (uint)(data?.Length ?? 0));

    public Task SendOptionAsync(uint option, byte[] data, uint declaredLength)
    {
        var header = new byte[16];
        BinaryPrimitives.WriteUInt64BigEndian(header, OptsMagic);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(12), declaredLength);
        return SendAsync(Cat(header, data));
    }

    public async Task<OptionReply> ReadOptionReplyAsync()
    {
        var h = await ReadExactAsync(20);
        ulong magic = BinaryPrimitives.ReadUInt64BigEndian(h);
        if (magic != RepMagic)
            throw new InvalidDataException($"bad option reply magic 0x{magic:x}");
        uint length = BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(16));
        return new OptionReply(BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(8)), BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(12)), await ReadExactAsync((int)length));
    }

    /// <summary>Replies up to and including ACK or an error.</summary>
    public async Task<List<OptionReply>> ReadOptionRepliesAsync()
    {
        var list = new List<OptionReply>();
        while (true)
        {
            var r = await ReadOptionReplyAsync();
            list.Add(r);
            if (r.Type == 1 || r.IsError)
                return list;
        }
    }

    public async Task<List<OptionReply>> OptionAsync(uint option, byte[]? data = null)
    {
        await SendOptionAsync(option, data);
        return await ReadOptionRepliesAsync();
    }

    public static byte[] InfoPayload(string name, params ushort[] infos) =>
        Cat(U32((uint)Encoding.UTF8.GetByteCount(name)), Str(name), U16((ushort)infos.Length), Cat(infos.Select(U16).ToArray()));

    public static byte[] MetaPayload(string name, params string[] queries) =>
        Cat(U32((uint)Encoding.UTF8.GetByteCount(name)), Str(name), U32((uint)queries.Length),
            Cat(queries.Select(q => Cat(U32((uint)Encoding.UTF8.GetByteCount(q)), Str(q))).ToArray()));

    public Task<List<OptionReply>> GoAsync(string name, params ushort[] infos) => OptionAsync(7, InfoPayload(name, infos));

    public Task<List<OptionReply>> InfoAsync(string name, params ushort[] infos) => OptionAsync(6, InfoPayload(name, infos));

    public Task<List<OptionReply>> ListMetaAsync(string name, params string[] queries) => OptionAsync(9, MetaPayload(name, queries));

    public Task<List<OptionReply>> SetMetaAsync(string name, params string[] queries) => OptionAsync(10, MetaPayload(name, queries));

    /// <summary>STRUCTURED_REPLY (optional), SET_META_CONTEXT (optional), GO; returns the transmission flags.</summary>
    public async Task<ushort> NegotiateAsync(string export, bool structured = true, params string[] contexts)
    {
        if (structured)
        {
            var sr = await OptionAsync(8);
            if (sr[^1].Type != 1)
                throw new InvalidDataException("STRUCTURED_REPLY refused: " + sr[^1]);
        }
        if (contexts.Length > 0)
        {
            var set = await SetMetaAsync(export, contexts);
            if (set[^1].Type != 1)
                throw new InvalidDataException("SET_META_CONTEXT refused: " + set[^1]);
        }
        var go = await GoAsync(export);
        var info = go.FirstOrDefault(r => r.Type == 3 && r.InfoType == 0)
            ?? throw new InvalidDataException("GO failed: " + string.Join("; ", go));
        if (go[^1].Type != 1)
            throw new InvalidDataException("GO failed: " + go[^1]);
        return BinaryPrimitives.ReadUInt16BigEndian(info.Data.AsSpan(10));
    }

    // ------------------------------------------------------------------ transmission

    public static byte[] Request(ushort type, ushort flags, ulong cookie, ulong offset, uint length, byte[]? payload = null)
    {
        var h = new byte[28];
        BinaryPrimitives.WriteUInt32BigEndian(h, 0x25609513);
        BinaryPrimitives.WriteUInt16BigEndian(h.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt16BigEndian(h.AsSpan(6), type);
        BinaryPrimitives.WriteUInt64BigEndian(h.AsSpan(8), cookie);
        BinaryPrimitives.WriteUInt64BigEndian(h.AsSpan(16), offset);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(24), length);
        return payload == null ? h : Cat(h, payload);
    }

    public Task SendRequestAsync(ushort type, ushort flags, ulong cookie, ulong offset, uint length, byte[]? payload = null) =>
        SendAsync(Request(type, flags, cookie, offset, length, payload));

    /// <summary>One simple reply or structured chunk.</summary>
    public async Task<Reply> ReadReplyAsync()
    {
        var m = await ReadExactAsync(4);
        uint magic = BinaryPrimitives.ReadUInt32BigEndian(m);
        if (magic == 0x67446698)
        {
            var h = await ReadExactAsync(12);
            uint error = BinaryPrimitives.ReadUInt32BigEndian(h);
            ulong cookie = BinaryPrimitives.ReadUInt64BigEndian(h.AsSpan(4));
            byte[] data = error == 0 ? await ReadExactAsync(SimpleDataLength(cookie)) : [];
            return new Reply(true, error, 0, 0xFFFF, cookie, data);
        }
        if (magic == 0x668e33ef)
        {
            var h = await ReadExactAsync(16);
            uint length = BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(12));
            return new Reply(false, 0, BinaryPrimitives.ReadUInt16BigEndian(h), BinaryPrimitives.ReadUInt16BigEndian(h.AsSpan(2)),
                BinaryPrimitives.ReadUInt64BigEndian(h.AsSpan(4)), await ReadExactAsync((int)length));
        }
        throw new InvalidDataException($"bad reply magic 0x{magic:x}");
    }

    /// <summary>Every chunk of one reply (the next replies must all belong to one cookie).</summary>
    public async Task<List<Reply>> ReadAllChunksAsync()
    {
        var list = new List<Reply>();
        while (true)
        {
            var r = await ReadReplyAsync();
            list.Add(r);
            if (r.Done)
                return list;
        }
    }

    public async Task<List<Reply>> RequestAsync(ushort type, ushort flags, ulong offset, uint length, byte[]? payload = null, ulong cookie = 7)
    {
        await SendRequestAsync(type, flags, cookie, offset, length, payload);
        var chunks = await ReadAllChunksAsync();
        if (chunks.Any(c => c.Cookie != cookie))
            throw new InvalidDataException("reply for another cookie");
        return chunks;
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (SocketException)
        {
        }
        await _stream.DisposeAsync();
    }
}
