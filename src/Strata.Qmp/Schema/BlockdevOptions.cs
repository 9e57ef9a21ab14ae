using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;

namespace Strata.Qmp;

// qapi/block-core.json: blockdev-add (BlockdevOptions), blockdev-del, block_resize.

/// <summary>Names of the block drivers (BlockdevDriver) used most.</summary>
public static class BlockdevDriver
{
    public const string File = "file";
    public const string HostDevice = "host_device";
    public const string Qcow2 = "qcow2";
    public const string Raw = "raw";
    public const string NullCo = "null-co";
    public const string NullAio = "null-aio";
    public const string Nbd = "nbd";
    public const string CopyBeforeWrite = "copy-before-write";
    public const string SnapshotAccess = "snapshot-access";
    public const string Throttle = "throttle";
    public const string Blkdebug = "blkdebug";
}

/// <summary>BlockdevDiscardOptions.</summary>
[JsonConverter(typeof(QapiEnumConverter<BlockdevDiscardOptions>))]
public enum BlockdevDiscardOptions
{
    Ignore,
    Unmap,
}

/// <summary>BlockdevDetectZeroesOptions.</summary>
[JsonConverter(typeof(QapiEnumConverter<BlockdevDetectZeroesOptions>))]
public enum BlockdevDetectZeroesOptions
{
    Off,
    On,
    Unmap,
}

/// <summary>BlockdevCacheOptions.</summary>
public sealed record BlockdevCacheOptions
{
    [JsonPropertyName("direct")] public bool? Direct { get; init; }

    [JsonPropertyName("no-flush")] public bool? NoFlush { get; init; }
}

/// <summary>
/// Arguments of blockdev-add (BlockdevOptions): the members common to every driver, typed,
/// and the driver's own members in <see cref="DriverOptions"/>. Typed views of the driver
/// members: <see cref="AsFile"/>, <see cref="AsQcow2"/>, <see cref="AsRaw"/>, <see cref="AsNull"/>
/// (or <see cref="As{T}"/>); build with <see cref="File"/>, <see cref="Qcow2"/>, <see cref="Raw"/>,
/// <see cref="NullCo"/> or <see cref="Create{T}"/>.
/// </summary>
public sealed record BlockdevOptions
{
    /// <summary>The driver, e.g. "qcow2" (<see cref="BlockdevDriver"/>).</summary>
    [JsonPropertyName("driver")] public required string Driver { get; init; }

    [JsonPropertyName("node-name")] public string? NodeName { get; init; }

    [JsonPropertyName("discard")] public BlockdevDiscardOptions? Discard { get; init; }

    [JsonPropertyName("cache")] public BlockdevCacheOptions? Cache { get; init; }

    [JsonPropertyName("read-only")] public bool? ReadOnly { get; init; }

    [JsonPropertyName("auto-read-only")] public bool? AutoReadOnly { get; init; }

    [JsonPropertyName("force-share")] public bool? ForceShare { get; init; }

    [JsonPropertyName("detect-zeroes")] public BlockdevDetectZeroesOptions? DetectZeroes { get; init; }

    /// <summary>The driver-specific members (the union branch), in the order given.</summary>
    [JsonExtensionData] public Dictionary<string, JsonElement>? DriverOptions { get; set; }

    /// <summary>Options for <paramref name="driver"/> with its members taken from <paramref name="driverOptions"/>.</summary>
    public static BlockdevOptions Create<T>(string driver, string? nodeName, T driverOptions, JsonTypeInfo<T> typeInfo) =>
        new()
        {
            Driver = driver,
            NodeName = nodeName,
            DriverOptions = ExtensionMembers.From(driverOptions, typeInfo),
        };

    /// <summary>The driver-specific members read as <typeparamref name="T"/>.</summary>
    public T As<T>(JsonTypeInfo<T> typeInfo) =>
        ExtensionMembers.To(DriverOptions, typeInfo) ?? throw new JsonException($"no options for driver {Driver}");

    public BlockdevOptionsFile AsFile() => As(QmpJsonContext.Default.BlockdevOptionsFile);

    public BlockdevOptionsQcow2 AsQcow2() => As(QmpJsonContext.Default.BlockdevOptionsQcow2);

    public BlockdevOptionsRaw AsRaw() => As(QmpJsonContext.Default.BlockdevOptionsRaw);

    public BlockdevOptionsNull AsNull() => As(QmpJsonContext.Default.BlockdevOptionsNull);

    /// <summary>A file node (driver "file").</summary>
    public static BlockdevOptions File(string? nodeName, string filename, BlockdevOptionsFile? options = null) =>
        Create(BlockdevDriver.File, nodeName, (options ?? new BlockdevOptionsFile { Filename = filename }) with { Filename = filename },
            QmpJsonContext.Default.BlockdevOptionsFile);

    /// <summary>A qcow2 node over <paramref name="file"/> (a node name or an inline definition).</summary>
    public static BlockdevOptions Qcow2(string? nodeName, BlockdevRef file, BlockdevRefOrNull? backing = null) =>
        Create(BlockdevDriver.Qcow2, nodeName, new BlockdevOptionsQcow2 { File = file, Backing = backing },
            QmpJsonContext.Default.BlockdevOptionsQcow2);

    /// <summary>A qcow2 node with all its options.</summary>
    public static BlockdevOptions Qcow2(string? nodeName, BlockdevOptionsQcow2 options) =>
        Create(BlockdevDriver.Qcow2, nodeName, options, QmpJsonContext.Default.BlockdevOptionsQcow2);

    /// <summary>A raw node over <paramref name="file"/>.</summary>
    public static BlockdevOptions Raw(string? nodeName, BlockdevRef file, long? offset = null, long? size = null) =>
        Create(BlockdevDriver.Raw, nodeName, new BlockdevOptionsRaw { File = file, Offset = offset, Size = size },
            QmpJsonContext.Default.BlockdevOptionsRaw);

    /// <summary>A null-co node (reads return zeroes if <paramref name="readZeroes"/>, writes are dropped).</summary>
    public static BlockdevOptions NullCo(string? nodeName, long? size = null, bool? readZeroes = null) =>
        Create(BlockdevDriver.NullCo, nodeName, new BlockdevOptionsNull { Size = size, ReadZeroes = readZeroes },
            QmpJsonContext.Default.BlockdevOptionsNull);
}

/// <summary>OnOffAuto.</summary>
[JsonConverter(typeof(QapiEnumConverter<OnOffAuto>))]
public enum OnOffAuto
{
    Auto,
    On,
    Off,
}

/// <summary>BlockdevAioOptions.</summary>
[JsonConverter(typeof(QapiEnumConverter<BlockdevAioOptions>))]
public enum BlockdevAioOptions
{
    Threads,
    Native,
    [JsonStringEnumMemberName("io_uring")] IoUring,
}

/// <summary>Driver members of "file" (BlockdevOptionsFile).</summary>
public sealed record BlockdevOptionsFile
{
    [JsonPropertyName("filename")] public required string Filename { get; init; }

    [JsonPropertyName("pr-manager")] public string? PrManager { get; init; }

    [JsonPropertyName("locking")] public OnOffAuto? Locking { get; init; }

    [JsonPropertyName("aio")] public BlockdevAioOptions? Aio { get; init; }

    [JsonPropertyName("aio-max-batch")] public long? AioMaxBatch { get; init; }

    [JsonPropertyName("drop-cache")] public bool? DropCache { get; init; }

    [JsonPropertyName("x-check-cache-dropped")] public bool? XCheckCacheDropped { get; init; }
}

/// <summary>Driver members of "qcow2" (BlockdevOptionsQcow2, with its bases BlockdevOptionsGenericCOWFormat and GenericFormat).</summary>
public sealed record BlockdevOptionsQcow2
{
    [JsonPropertyName("file")] public required BlockdevRef File { get; init; }

    [JsonPropertyName("backing")] public BlockdevRefOrNull? Backing { get; init; }

    [JsonPropertyName("lazy-refcounts")] public bool? LazyRefcounts { get; init; }

    [JsonPropertyName("pass-discard-request")] public bool? PassDiscardRequest { get; init; }

    [JsonPropertyName("pass-discard-snapshot")] public bool? PassDiscardSnapshot { get; init; }

    [JsonPropertyName("pass-discard-other")] public bool? PassDiscardOther { get; init; }

    /// <summary>Qcow2OverlapChecks: a template name ("none", "constant", "cached", "all") or an object of flags.</summary>
    [JsonPropertyName("overlap-check")] public JsonNode? OverlapCheck { get; init; }

    [JsonPropertyName("cache-size")] public long? CacheSize { get; init; }

    [JsonPropertyName("l2-cache-size")] public long? L2CacheSize { get; init; }

    [JsonPropertyName("l2-cache-entry-size")] public long? L2CacheEntrySize { get; init; }

    [JsonPropertyName("refcount-cache-size")] public long? RefcountCacheSize { get; init; }

    [JsonPropertyName("cache-clean-interval")] public long? CacheCleanInterval { get; init; }

    /// <summary>BlockdevQcow2Encryption.</summary>
    [JsonPropertyName("encrypt")] public JsonObject? Encrypt { get; init; }

    [JsonPropertyName("data-file")] public BlockdevRef? DataFile { get; init; }
}

/// <summary>Driver members of "raw" (BlockdevOptionsRaw).</summary>
public sealed record BlockdevOptionsRaw
{
    [JsonPropertyName("file")] public required BlockdevRef File { get; init; }

    [JsonPropertyName("offset")] public long? Offset { get; init; }

    [JsonPropertyName("size")] public long? Size { get; init; }
}

/// <summary>Driver members of "null-co" and "null-aio" (BlockdevOptionsNull).</summary>
public sealed record BlockdevOptionsNull
{
    [JsonPropertyName("size")] public long? Size { get; init; }

    [JsonPropertyName("latency-ns")] public long? LatencyNs { get; init; }

    [JsonPropertyName("read-zeroes")] public bool? ReadZeroes { get; init; }
}

/// <summary>Arguments of blockdev-del.</summary>
public sealed record BlockdevDelArgs
{
    [JsonPropertyName("node-name")] public required string NodeName { get; init; }
}

/// <summary>Arguments of block_resize.</summary>
public sealed record BlockResizeArgs
{
    [JsonPropertyName("device")] public string? Device { get; init; }

    [JsonPropertyName("node-name")] public string? NodeName { get; init; }

    [JsonPropertyName("size")] public required long Size { get; init; }
}

/// <summary>Helpers for the driver/type-specific members kept as extension data.</summary>
internal static class ExtensionMembers
{
    public static Dictionary<string, JsonElement>? From<T>(T value, JsonTypeInfo<T> typeInfo)
    {
        var element = JsonSerializer.SerializeToElement(value, typeInfo);
        if (element.ValueKind != JsonValueKind.Object)
        {
            return null;
        }

        var members = new Dictionary<string, JsonElement>(StringComparer.Ordinal);
        foreach (var p in element.EnumerateObject())
        {
            members[p.Name] = p.Value.Clone();
        }

        return members.Count == 0 ? null : members;
    }

    public static T? To<T>(Dictionary<string, JsonElement>? members, JsonTypeInfo<T> typeInfo)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(256);
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            foreach (var (name, value) in members ?? [])
            {
                writer.WritePropertyName(name);
                value.WriteTo(writer);
            }

            writer.WriteEndObject();
        }

        return JsonSerializer.Deserialize(buffer.WrittenSpan, typeInfo);
    }
}
