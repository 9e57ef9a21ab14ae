using System.Text.Json;
using System.Text.Json.Serialization;

namespace Strata.Qmp;

// qapi/block-export.json, qapi/sockets.json: block-export-add/del, query-block-exports, nbd-server-*.

/// <summary>BlockExportType.</summary>
[JsonConverter(typeof(QapiEnumConverter<BlockExportType>))]
public enum BlockExportType
{
    Nbd,
    VhostUserBlk,
    Fuse,
    VduseBlk,
}

/// <summary>BlockExportRemoveMode.</summary>
[JsonConverter(typeof(QapiEnumConverter<BlockExportRemoveMode>))]
public enum BlockExportRemoveMode
{
    /// <summary>Remove once no client is connected.</summary>
    Safe,

    /// <summary>Disconnect clients at once.</summary>
    Hard,
}

/// <summary>
/// Arguments of block-export-add (BlockExportOptions): the common members typed, the
/// export type's own members in <see cref="TypeOptions"/> (typed view for NBD:
/// <see cref="AsNbd"/>; build with <see cref="Nbd"/>).
/// </summary>
public sealed record BlockExportOptions
{
    [JsonPropertyName("type")] public required BlockExportType Type { get; init; }

    [JsonPropertyName("id")] public required string Id { get; init; }

    [JsonPropertyName("fixed-iothread")] public bool? FixedIothread { get; init; }

    [JsonPropertyName("iothread")] public string? Iothread { get; init; }

    [JsonPropertyName("node-name")] public required string NodeName { get; init; }

    [JsonPropertyName("writable")] public bool? Writable { get; init; }

    [JsonPropertyName("writethrough")] public bool? Writethrough { get; init; }

    /// <summary>Members of the export type.</summary>
    [JsonExtensionData] public Dictionary<string, JsonElement>? TypeOptions { get; set; }

    public BlockExportOptionsNbd AsNbd() =>
        ExtensionMembers.To(TypeOptions, QmpJsonContext.Default.BlockExportOptionsNbd) ?? new BlockExportOptionsNbd();

    /// <summary>An NBD export of <paramref name="nodeName"/> (the NBD server must be running).</summary>
    public static BlockExportOptions Nbd(string id, string nodeName, BlockExportOptionsNbd? nbd = null, bool? writable = null) => new()
    {
        Type = BlockExportType.Nbd,
        Id = id,
        NodeName = nodeName,
        Writable = writable,
        TypeOptions = nbd is null ? null : ExtensionMembers.From(nbd, QmpJsonContext.Default.BlockExportOptionsNbd),
    };
}

/// <summary>Members of an NBD export (BlockExportOptionsNbd with its base BlockExportOptionsNbdBase).</summary>
public sealed record BlockExportOptionsNbd
{
    /// <summary>Export name (default: the node name).</summary>
    [JsonPropertyName("name")] public string? Name { get; init; }

    [JsonPropertyName("description")] public string? Description { get; init; }

    [JsonPropertyName("bitmaps")] public IReadOnlyList<BlockDirtyBitmapOrStr>? Bitmaps { get; init; }

    [JsonPropertyName("allocation-depth")] public bool? AllocationDepth { get; init; }
}

/// <summary>Arguments of block-export-del.</summary>
public sealed record BlockExportDelArgs
{
    [JsonPropertyName("id")] public required string Id { get; init; }

    [JsonPropertyName("mode")] public BlockExportRemoveMode? Mode { get; init; }
}

/// <summary>An export (BlockExportInfo), from query-block-exports.</summary>
public sealed record BlockExportInfo
{
    [JsonPropertyName("id")] public string Id { get; init; } = "";

    [JsonPropertyName("type")] public BlockExportType Type { get; init; }

    [JsonPropertyName("node-name")] public string NodeName { get; init; } = "";

    [JsonPropertyName("shutting-down")] public bool ShuttingDown { get; init; }
}

/// <summary>
/// SocketAddressLegacy: <c>{"type": "unix", "data": {"path": …}}</c>; build with
/// <see cref="Unix"/> or <see cref="Inet"/>.
/// </summary>
public sealed record SocketAddressLegacy
{
    /// <summary>"inet", "unix", "vsock" or "fd".</summary>
    [JsonPropertyName("type")] public required string Type { get; init; }

    [JsonPropertyName("data")] public required JsonElement Data { get; init; }

    public static SocketAddressLegacy Unix(string path) => new()
    {
        Type = "unix",
        Data = JsonSerializer.SerializeToElement(new UnixSocketAddress { Path = path }, QmpJsonContext.Default.UnixSocketAddress),
    };

    public static SocketAddressLegacy Inet(string host, string port) => new()
    {
        Type = "inet",
        Data = JsonSerializer.SerializeToElement(new InetSocketAddress { Host = host, Port = port }, QmpJsonContext.Default.InetSocketAddress),
    };
}

/// <summary>InetSocketAddress.</summary>
public sealed record InetSocketAddress
{
    [JsonPropertyName("host")] public required string Host { get; init; }

    /// <summary>Port number or service name.</summary>
    [JsonPropertyName("port")] public required string Port { get; init; }

    [JsonPropertyName("numeric")] public bool? Numeric { get; init; }

    [JsonPropertyName("to")] public long? To { get; init; }

    [JsonPropertyName("ipv4")] public bool? Ipv4 { get; init; }

    [JsonPropertyName("ipv6")] public bool? Ipv6 { get; init; }

    [JsonPropertyName("keep-alive")] public bool? KeepAlive { get; init; }

    [JsonPropertyName("mptcp")] public bool? Mptcp { get; init; }
}

/// <summary>UnixSocketAddress.</summary>
public sealed record UnixSocketAddress
{
    [JsonPropertyName("path")] public required string Path { get; init; }

    [JsonPropertyName("abstract")] public bool? Abstract { get; init; }

    [JsonPropertyName("tight")] public bool? Tight { get; init; }
}

/// <summary>Arguments of nbd-server-start.</summary>
public sealed record NbdServerStartArgs
{
    [JsonPropertyName("addr")] public required SocketAddressLegacy Addr { get; init; }

    [JsonPropertyName("tls-creds")] public string? TlsCreds { get; init; }

    [JsonPropertyName("tls-authz")] public string? TlsAuthz { get; init; }

    [JsonPropertyName("max-connections")] public long? MaxConnections { get; init; }
}

/// <summary>Arguments of nbd-server-add (NbdServerAddOptions; deprecated in favour of block-export-add).</summary>
public sealed record NbdServerAddArgs
{
    [JsonPropertyName("name")] public string? Name { get; init; }

    [JsonPropertyName("description")] public string? Description { get; init; }

    [JsonPropertyName("device")] public required string Device { get; init; }

    [JsonPropertyName("writable")] public bool? Writable { get; init; }

    [JsonPropertyName("bitmap")] public string? Bitmap { get; init; }
}

/// <summary>Arguments of nbd-server-remove.</summary>
public sealed record NbdServerRemoveArgs
{
    [JsonPropertyName("name")] public required string Name { get; init; }

    [JsonPropertyName("mode")] public BlockExportRemoveMode? Mode { get; init; }
}
