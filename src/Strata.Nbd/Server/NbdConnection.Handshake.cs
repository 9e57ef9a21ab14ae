using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using Microsoft.Extensions.Logging;
using Strata.Nbd.MetaContexts;
using Strata.Nbd.Protocol;

namespace Strata.Nbd.Server;

/// <summary>Fixed-newstyle negotiation, a port of QEMU 7.2's nbd_negotiate_options() and its helpers.</summary>
internal sealed partial class NbdConnection
{
    private NbdExport? _export;
    private bool _structured;
    private uint _opt;        // option being negotiated
    private long _optLen;     // its payload bytes not read yet
    private NbdExport? _metaExport;
    private bool[]? _metaSelected; // by context id, as chosen by SET_META_CONTEXT
    private int _metaCount;

    /// <summary>Runs the handshake; true when the client entered transmission, false when it aborted.</summary>
    private bool Negotiate()
    {
        var greeting = _out.GetSpan(18);
        BinaryPrimitives.WriteUInt64BigEndian(greeting, NbdConstants.InitMagic);
        BinaryPrimitives.WriteUInt64BigEndian(greeting[8..], NbdConstants.OptionMagic);
        BinaryPrimitives.WriteUInt16BigEndian(greeting[16..], (ushort)(NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes));
        _out.Advance(18);
        FlushHandshake();

        uint flags = ReadUInt32();
        bool fixedNewstyle = (flags & (uint)NbdClientFlags.FixedNewstyle) != 0;
        bool noZeroes = (flags & (uint)NbdClientFlags.NoZeroes) != 0;
        flags &= ~(uint)(NbdClientFlags.FixedNewstyle | NbdClientFlags.NoZeroes);
        if (flags != 0)
            throw new NbdProtocolException($"option negotiation failed: Unknown client flags 0x{flags:x} received");

        while (true)
        {
            if (ReadUInt64() != NbdConstants.OptionMagic)
                throw new NbdProtocolException("option negotiation failed: Bad magic received");
            uint option = ReadUInt32();
            uint length = ReadUInt32();
            _opt = option;
            _optLen = length;
            if (length > NbdConstants.MaxBufferSize)
                throw new NbdProtocolException($"option negotiation failed: len ({length} ) is larger than max len ({NbdConstants.MaxBufferSize})");

            if (!fixedNewstyle)
            {
                // Broken newstyle clients may only name the export.
                if (option == (uint)NbdOption.ExportName)
                    return HandleExportName(noZeroes);
                throw new NbdProtocolException($"option negotiation failed: Unsupported option {option} ({NbdNames.Option(option)})");
            }

            switch ((NbdOption)option)
            {
                case NbdOption.List:
                    if (length != 0)
                        RejectLength(fatal: false);
                    else
                        HandleList();
                    break;
                case NbdOption.Abort:
                    // The spec wants an ACK before the close, but the client may not wait for it.
                    SendReply(NbdOptionReply.Ack, 0);
                    try
                    {
                        FlushHandshake();
                    }
                    catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException or OperationCanceledException)
                    {
                    }
                    return false;
                case NbdOption.ExportName:
                    return HandleExportName(noZeroes);
                case NbdOption.Info:
                case NbdOption.Go:
                    if (HandleInfo())
                    {
                        FlushHandshake();
                        return true;
                    }
                    break;
                case NbdOption.StartTls:
                    if (length != 0)
                        RejectLength(fatal: false);
                    else
                        SendError(NbdOptionReply.ErrPolicy, "TLS not configured");
                    break;
                case NbdOption.StructuredReply:
                    if (length != 0)
                    {
                        RejectLength(fatal: false);
                    }
                    else if (_structured)
                    {
                        SendError(NbdOptionReply.ErrInvalid, "structured reply already negotiated");
                    }
                    else
                    {
                        SendReply(NbdOptionReply.Ack, 0);
                        _structured = true;
                    }
                    break;
                case NbdOption.ListMetaContext:
                case NbdOption.SetMetaContext:
                    HandleMetaQueries();
                    break;
                default:
                    OptionDrop(NbdOptionReply.ErrUnsup, $"Unsupported option {option} ({NbdNames.Option(option)})");
                    break;
            }
            FlushHandshake();
        }
    }

    // ------------------------------------------------------------------ replies

    private void SendReply(NbdOptionReply type, int length)
    {
        var span = _out.GetSpan(NbdConstants.OptionReplyHeaderSize);
        BinaryPrimitives.WriteUInt64BigEndian(span, NbdConstants.OptionReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(span[8..], _opt);
        BinaryPrimitives.WriteUInt32BigEndian(span[12..], (uint)type);
        BinaryPrimitives.WriteUInt32BigEndian(span[16..], (uint)length);
        _out.Advance(NbdConstants.OptionReplyHeaderSize);
    }

    private void SendError(NbdOptionReply type, string message)
    {
        int length = Encoding.UTF8.GetByteCount(message);
        SendReply(type, length);
        _out.Write(Encoding.UTF8.GetBytes(message));
        _log.LogDebug("NBD client {Peer}: option {Option} refused: {Message}", _peer, NbdNames.Option(_opt), message);
    }

    private void SendInfo(NbdInfo info, ReadOnlySpan<byte> payload)
    {
        SendReply(NbdOptionReply.Info, 2 + payload.Length);
        BinaryPrimitives.WriteUInt16BigEndian(_out.GetSpan(2), (ushort)info);
        _out.Advance(2);
        _out.Write(payload);
    }

    /// <summary>Drops the rest of the option and answers with an error (QEMU's nbd_opt_drop).</summary>
    private void OptionDrop(NbdOptionReply type, string message)
    {
        long rest = _optLen;
        _optLen = 0;
        Skip(rest);
        SendError(type, message);
    }

    private void OptionInvalid(string message) => OptionDrop(NbdOptionReply.ErrInvalid, message);

    private void RejectLength(bool fatal)
    {
        string message = $"option '{NbdNames.Option(_opt)}' has unexpected length";
        OptionInvalid(message);
        if (fatal)
            throw new NbdProtocolException("option negotiation failed: " + message);
    }

    /// <summary>Reads option payload; false when the option was answered with an error instead (QEMU's nbd_opt_read).</summary>
    private bool OptionRead(Span<byte> destination, bool checkNul)
    {
        if (destination.Length > _optLen)
        {
            OptionInvalid($"Inconsistent lengths in option {NbdNames.Option(_opt)}");
            return false;
        }
        _optLen -= destination.Length;
        ReadExact(destination);
        if (checkNul && destination.Contains((byte)0))
        {
            OptionInvalid($"Unexpected embedded NUL in option {NbdNames.Option(_opt)}");
            return false;
        }
        return true;
    }

    private bool OptionSkip(long count)
    {
        if (count > _optLen)
        {
            OptionInvalid($"Inconsistent lengths in option {NbdNames.Option(_opt)}");
            return false;
        }
        _optLen -= count;
        Skip(count);
        return true;
    }

    private uint? OptionReadUInt32()
    {
        if (!OptionRead(_scratch.AsSpan(0, 4), checkNul: false))
            return null;
        return BinaryPrimitives.ReadUInt32BigEndian(_scratch);
    }

    /// <summary>Reads "u32 length, name" (QEMU's nbd_opt_read_name); null when the option was answered with an error.</summary>
    private byte[]? OptionReadName()
    {
        uint? length = OptionReadUInt32();
        if (length == null)
            return null;
        if (length > NbdConstants.MaxStringSize)
        {
            OptionInvalid($"Invalid name length: {length}");
            return null;
        }
        var name = new byte[length.Value];
        return OptionRead(name, checkNul: true) ? name : null;
    }

    /// <summary>A client-supplied name fit for an error message (QEMU's nbd_sanitize_name).</summary>
    private static string Sanitize(ReadOnlySpan<byte> name)
    {
        int nul = name.IndexOf((byte)0);
        if (nul >= 0)
            name = name[..nul];
        return name.Length < 80 ? Encoding.UTF8.GetString(name) : Encoding.UTF8.GetString(name[..80]) + "...";
    }

    // ------------------------------------------------------------------ options

    private void HandleList()
    {
        foreach (var export in _server.SnapshotExports())
        {
            byte[] name = export.NameBytes;
            byte[] description = export.DescriptionBytes ?? [];
            SendReply(NbdOptionReply.Server, 4 + name.Length + description.Length);
            BinaryPrimitives.WriteUInt32BigEndian(_out.GetSpan(4), (uint)name.Length);
            _out.Advance(4);
            _out.Write(name);
            _out.Write(description);
        }
        SendReply(NbdOptionReply.Ack, 0);
    }

    private bool HandleExportName(bool noZeroes)
    {
        if (_optLen > NbdConstants.MaxStringSize)
            throw new NbdProtocolException("option negotiation failed: Bad length received");
        var name = new byte[_optLen];
        ReadExact(name);
        _optLen = 0;
        // QEMU compares C strings: the name ends at the first NUL.
        int nul = Array.IndexOf(name, (byte)0);
        var export = _server.FindExport(nul >= 0 ? name.AsSpan(0, nul) : name);
        if (export == null || !_server.TryAttach(export, this))
            throw new NbdProtocolException("option negotiation failed: export not found");
        _export = export;

        var flags = export.TransmissionFlags;
        if (_structured)
            flags |= NbdTransmissionFlags.SendDf;
        int length = noZeroes ? 10 : 10 + NbdConstants.ExportNamePadding;
        var span = _out.GetSpan(length)[..length];
        span.Clear();
        BinaryPrimitives.WriteUInt64BigEndian(span, (ulong)export.Size);
        BinaryPrimitives.WriteUInt16BigEndian(span[8..], (ushort)flags);
        _out.Advance(length);
        FlushHandshake();
        CheckMetaExport();
        return true;
    }

    /// <summary>NBD_OPT_INFO and NBD_OPT_GO; true when GO succeeded (transmission starts).</summary>
    private bool HandleInfo()
    {
        byte[]? name = OptionReadName();
        if (name == null)
            return false;
        if (!OptionRead(_scratch.AsSpan(0, 2), checkNul: false))
            return false;
        int requests = BinaryPrimitives.ReadUInt16BigEndian(_scratch);
        bool sendName = false;
        bool blockSize = false;
        for (int i = 0; i < requests; i++)
        {
            if (!OptionRead(_scratch.AsSpan(0, 2), checkNul: false))
                return false;
            switch ((NbdInfo)BinaryPrimitives.ReadUInt16BigEndian(_scratch))
            {
                case NbdInfo.Name:
                    sendName = true;
                    break;
                case NbdInfo.BlockSize:
                    blockSize = true;
                    break;
            }
        }
        if (_optLen != 0)
        {
            RejectLength(fatal: false);
            return false;
        }

        bool go = _opt == (uint)NbdOption.Go;
        var export = _server.FindExport(name);
        if (export == null || (go && !_server.TryAttach(export, this)))
        {
            SendError(NbdOptionReply.ErrUnknown, $"export '{Sanitize(name)}' not present");
            return false;
        }

        if (sendName)
            SendInfo(NbdInfo.Name, name);
        if (export.DescriptionBytes is { } description)
            SendInfo(NbdInfo.Description, description);

        // Minimum 1 for clients that did not ask (back-compat), the real alignment when they will obey it.
        int alignment = export.RequestAlignment;
        uint min = !go || blockSize ? (uint)alignment : 1;
        Span<byte> sizes = stackalloc byte[12];
        BinaryPrimitives.WriteUInt32BigEndian(sizes, min);
        BinaryPrimitives.WriteUInt32BigEndian(sizes[4..], Math.Max(4096u, min));
        BinaryPrimitives.WriteUInt32BigEndian(sizes[8..], NbdConstants.MaxBufferSize);
        SendInfo(NbdInfo.BlockSize, sizes);

        var flags = export.TransmissionFlags;
        if (_structured)
            flags |= NbdTransmissionFlags.SendDf;
        Span<byte> info = stackalloc byte[10];
        BinaryPrimitives.WriteUInt64BigEndian(info, (ulong)export.Size);
        BinaryPrimitives.WriteUInt16BigEndian(info[8..], (ushort)flags);
        SendInfo(NbdInfo.Export, info);

        if (!go && !blockSize && alignment > 1)
        {
            SendError(NbdOptionReply.ErrBlockSizeReqd, "request NBD_INFO_BLOCK_SIZE to use this export");
            return false;
        }
        SendReply(NbdOptionReply.Ack, 0);
        if (!go)
            return false;
        _export = export;
        CheckMetaExport();
        return true;
    }

    /// <summary>Contexts chosen for another export do not carry over (QEMU's nbd_check_meta_export).</summary>
    private void CheckMetaExport()
    {
        if (_metaExport != _export)
        {
            _metaSelected = null;
            _metaCount = 0;
        }
    }

    /// <summary>NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT (QEMU 7.2's nbd_negotiate_meta_queries).</summary>
    private void HandleMetaQueries()
    {
        bool isList = _opt == (uint)NbdOption.ListMetaContext;
        // QEMU 7.2 demands structured replies for SET only; LIST works without.
        if (!isList && !_structured)
        {
            OptionInvalid($"request option '{NbdNames.Option(_opt)}' when structured reply is not negotiated");
            return;
        }
        if (!isList)
        {
            _metaExport = null;
            _metaSelected = null;
            _metaCount = 0;
        }

        byte[]? name = OptionReadName();
        if (name == null)
            return;
        var export = _server.FindExport(name);
        if (export == null)
        {
            OptionDrop(NbdOptionReply.ErrUnknown, $"export '{Sanitize(name)}' not present");
            return;
        }
        var contexts = export.ContextsById.ToArray();
        var selected = new bool[contexts.Length];
        uint? queries = OptionReadUInt32();
        if (queries == null)
            return;
        if (isList && queries == 0)
        {
            for (int i = 0; i < contexts.Length; i++)
                selected[i] = contexts[i] != null;
        }
        else
        {
            for (uint q = 0; q < queries; q++)
            {
                if (!HandleMetaQuery(contexts, selected, isList))
                    return;
            }
        }
        // QEMU 7.2 leaves bytes after the last query unread (the next option then fails on its magic); skip them.
        if (_optLen > 0)
        {
            long rest = _optLen;
            _optLen = 0;
            Skip(rest);
        }

        int count = 0;
        for (int id = 0; id < contexts.Length; id++)
        {
            if (!selected[id])
                continue;
            byte[] contextName = Encoding.UTF8.GetBytes(contexts[id]!.Name);
            SendReply(NbdOptionReply.MetaContext, 4 + contextName.Length);
            BinaryPrimitives.WriteUInt32BigEndian(_out.GetSpan(4), isList ? 0u : (uint)id);
            _out.Advance(4);
            _out.Write(contextName);
            count++;
        }
        SendReply(NbdOptionReply.Ack, 0);
        if (!isList)
        {
            _metaExport = export;
            _metaSelected = selected;
            _metaCount = count;
        }
    }

    /// <summary>
    /// One query. Exact names select their context; in LIST, a namespace prefix ending in ':' selects every context
    /// under it ("base:", "qemu:", "qemu:dirty-bitmap:") — which is QEMU's rule set. Unknown names are ignored.
    /// </summary>
    private bool HandleMetaQuery(INbdMetaContextProvider?[] contexts, bool[] selected, bool isList)
    {
        uint? length = OptionReadUInt32();
        if (length == null)
            return false;
        if (length > NbdConstants.MaxStringSize)
            return OptionSkip(length.Value);
        var query = new byte[length.Value];
        if (!OptionRead(query, checkNul: true))
            return false;
        string text = Encoding.UTF8.GetString(query);
        bool prefix = isList && text.EndsWith(':');
        for (int id = 0; id < contexts.Length; id++)
        {
            var c = contexts[id];
            if (c == null)
                continue;
            if (c.Name == text)
            {
                // QEMU stops at the first context of that name (a bitmap exported twice is selected once).
                selected[id] = true;
                break;
            }
            if (prefix && c.Name.StartsWith(text, StringComparison.Ordinal))
                selected[id] = true;
        }
        return true;
    }
}
