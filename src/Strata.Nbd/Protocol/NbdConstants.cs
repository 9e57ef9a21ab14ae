namespace Strata.Nbd.Protocol;

/// <summary>Wire constants of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md); all integers are big-endian.</summary>
public static class NbdConstants
{
    /// <summary>"NBDMAGIC", first word of the server greeting.</summary>
    public const ulong InitMagic = 0x4e42444d41474943;
    /// <summary>"IHAVEOPT", newstyle greeting and the prefix of every client option.</summary>
    public const ulong OptionMagic = 0x49484156454F5054;
    public const ulong OptionReplyMagic = 0x0003e889045565a9;
    public const uint RequestMagic = 0x25609513;
    public const uint SimpleReplyMagic = 0x67446698;
    public const uint StructuredReplyMagic = 0x668e33ef;

    /// <summary>Largest payload (READ/WRITE/CACHE length, option length) QEMU accepts: 32 MiB.</summary>
    public const int MaxBufferSize = 32 << 20;
    /// <summary>Longest export name, description or meta-context query QEMU accepts.</summary>
    public const int MaxStringSize = 4096;
    /// <summary>Extents per BLOCK_STATUS chunk (QEMU's NBD_MAX_BLOCK_STATUS_EXTENTS: 1 MiB of extents).</summary>
    public const int MaxBlockStatusExtents = (1 << 20) / 8;

    public const int RequestHeaderSize = 28;
    public const int SimpleReplyHeaderSize = 16;
    public const int StructuredReplyHeaderSize = 20;
    public const int OptionReplyHeaderSize = 20;
    public const int ExportNamePadding = 124;
}

/// <summary>Handshake flags (server, u16).</summary>
[Flags]
public enum NbdHandshakeFlags : ushort
{
    None = 0,
    FixedNewstyle = 1,
    NoZeroes = 2,
}

/// <summary>Client flags (u32) sent after the greeting.</summary>
[Flags]
public enum NbdClientFlags : uint
{
    None = 0,
    FixedNewstyle = 1,
    NoZeroes = 2,
}

/// <summary>Transmission flags (u16) advertised per export.</summary>
[Flags]
public enum NbdTransmissionFlags : ushort
{
    None = 0,
    HasFlags = 1 << 0,
    ReadOnly = 1 << 1,
    SendFlush = 1 << 2,
    SendFua = 1 << 3,
    Rotational = 1 << 4,
    SendTrim = 1 << 5,
    SendWriteZeroes = 1 << 6,
    SendDf = 1 << 7,
    CanMultiConn = 1 << 8,
    SendResize = 1 << 9,
    SendCache = 1 << 10,
    SendFastZero = 1 << 11,
}

public enum NbdOption : uint
{
    ExportName = 1,
    Abort = 2,
    List = 3,
    PeekExport = 4,
    StartTls = 5,
    Info = 6,
    Go = 7,
    StructuredReply = 8,
    ListMetaContext = 9,
    SetMetaContext = 10,
    ExtendedHeaders = 11,
}

public enum NbdOptionReply : uint
{
    Ack = 1,
    Server = 2,
    Info = 3,
    MetaContext = 4,
    ErrUnsup = 0x80000001,
    ErrPolicy = 0x80000002,
    ErrInvalid = 0x80000003,
    ErrPlatform = 0x80000004,
    ErrTlsReqd = 0x80000005,
    ErrUnknown = 0x80000006,
    ErrShutdown = 0x80000007,
    ErrBlockSizeReqd = 0x80000008,
    ErrTooBig = 0x80000009,
}

public enum NbdInfo : ushort
{
    Export = 0,
    Name = 1,
    Description = 2,
    BlockSize = 3,
}

public enum NbdCommand : ushort
{
    Read = 0,
    Write = 1,
    Disconnect = 2,
    Flush = 3,
    Trim = 4,
    Cache = 5,
    WriteZeroes = 6,
    BlockStatus = 7,
    Resize = 8,
}

[Flags]
public enum NbdCommandFlags : ushort
{
    None = 0,
    Fua = 1 << 0,
    NoHole = 1 << 1,
    DontFragment = 1 << 2,
    ReqOne = 1 << 3,
    FastZero = 1 << 4,
}

public enum NbdReplyType : ushort
{
    None = 0,
    OffsetData = 1,
    OffsetHole = 2,
    BlockStatus = 5,
    Error = 0x8001,
    ErrorOffset = 0x8002,
}

/// <summary>Structured reply chunk flags.</summary>
[Flags]
public enum NbdReplyFlags : ushort
{
    None = 0,
    Done = 1,
}

/// <summary>NBD error values: Linux errno numbers whatever the host OS.</summary>
public enum NbdError : uint
{
    Success = 0,
    EPERM = 1,
    EIO = 5,
    ENOMEM = 12,
    EINVAL = 22,
    ENOSPC = 28,
    EOVERFLOW = 75,
    ENOTSUP = 95,
    ESHUTDOWN = 108,
}

/// <summary>base:allocation status bits.</summary>
[Flags]
public enum NbdAllocationFlags : uint
{
    None = 0,
    Hole = 1,
    Zero = 2,
}

/// <summary>Names as QEMU's nbd/common.c prints them in messages.</summary>
public static class NbdNames
{
    public static string Option(uint option) => (NbdOption)option switch
    {
        NbdOption.ExportName => "export name",
        NbdOption.Abort => "abort",
        NbdOption.List => "list",
        NbdOption.StartTls => "starttls",
        NbdOption.Info => "info",
        NbdOption.Go => "go",
        NbdOption.StructuredReply => "structured reply",
        NbdOption.ListMetaContext => "list meta context",
        NbdOption.SetMetaContext => "set meta context",
        _ => "<unknown>",
    };

    public static string Command(ushort command) => (NbdCommand)command switch
    {
        NbdCommand.Read => "read",
        NbdCommand.Write => "write",
        NbdCommand.Disconnect => "disconnect",
        NbdCommand.Flush => "flush",
        NbdCommand.Trim => "trim",
        NbdCommand.Cache => "cache",
        NbdCommand.WriteZeroes => "write zeroes",
        NbdCommand.BlockStatus => "block status",
        _ => "<unknown>",
    };
}
