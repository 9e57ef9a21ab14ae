using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;

namespace Strata.Qmp;

// qapi/block-core.json: blockdev-create (BlockdevCreateOptions).

/// <summary>Arguments of blockdev-create: a job that creates an image.</summary>
public sealed record BlockdevCreateArgs
{
    [JsonPropertyName("job-id")] public required string JobId { get; init; }

    [JsonPropertyName("options")] public required BlockdevCreateOptions Options { get; init; }
}

/// <summary>
/// BlockdevCreateOptions: the driver and its members (<see cref="DriverOptions"/>). Typed
/// views: <see cref="AsFile"/>, <see cref="AsQcow2"/>; build with <see cref="File"/>,
/// <see cref="Qcow2"/>, <see cref="Raw"/> or <see cref="Create{T}"/>.
/// </summary>
public sealed record BlockdevCreateOptions
{
    [JsonPropertyName("driver")] public required string Driver { get; init; }

    /// <summary>The driver-specific members.</summary>
    [JsonExtensionData] public Dictionary<string, JsonElement>? DriverOptions { get; set; }

    public static BlockdevCreateOptions Create<T>(string driver, T driverOptions, JsonTypeInfo<T> typeInfo) =>
        new() { Driver = driver, DriverOptions = ExtensionMembers.From(driverOptions, typeInfo) };

    public T As<T>(JsonTypeInfo<T> typeInfo) =>
        ExtensionMembers.To(DriverOptions, typeInfo) ?? throw new JsonException($"no options for driver {Driver}");

    public BlockdevCreateOptionsFile AsFile() => As(QmpJsonContext.Default.BlockdevCreateOptionsFile);

    public BlockdevCreateOptionsQcow2 AsQcow2() => As(QmpJsonContext.Default.BlockdevCreateOptionsQcow2);

    /// <summary>Creates (or truncates) a file of <paramref name="size"/> bytes.</summary>
    public static BlockdevCreateOptions File(string filename, long size, PreallocMode? preallocation = null) =>
        Create(BlockdevDriver.File, new BlockdevCreateOptionsFile { Filename = filename, Size = size, Preallocation = preallocation },
            QmpJsonContext.Default.BlockdevCreateOptionsFile);

    /// <summary>Formats the node <paramref name="file"/> as qcow2 of <paramref name="size"/> bytes.</summary>
    public static BlockdevCreateOptions Qcow2(BlockdevRef file, long size, BlockdevCreateOptionsQcow2? options = null) =>
        Create(BlockdevDriver.Qcow2, (options ?? new BlockdevCreateOptionsQcow2 { File = file, Size = size }) with { File = file, Size = size },
            QmpJsonContext.Default.BlockdevCreateOptionsQcow2);

    /// <summary>
    /// The "raw" branch, which has no members: QEMU 7.2 answers that raw does not support
    /// blockdev-create (create the file with <see cref="File"/> instead).
    /// </summary>
    public static BlockdevCreateOptions Raw() => new() { Driver = BlockdevDriver.Raw };
}

/// <summary>PreallocMode.</summary>
[JsonConverter(typeof(QapiEnumConverter<PreallocMode>))]
public enum PreallocMode
{
    Off,
    Metadata,
    Falloc,
    Full,
}

/// <summary>BlockdevQcow2Version.</summary>
[JsonConverter(typeof(QapiEnumConverter<BlockdevQcow2Version>))]
public enum BlockdevQcow2Version
{
    [JsonStringEnumMemberName("v2")] V2,
    [JsonStringEnumMemberName("v3")] V3,
}

/// <summary>Qcow2CompressionType.</summary>
[JsonConverter(typeof(QapiEnumConverter<Qcow2CompressionType>))]
public enum Qcow2CompressionType
{
    Zlib,
    Zstd,
}

/// <summary>Driver members for "file" (BlockdevCreateOptionsFile).</summary>
public sealed record BlockdevCreateOptionsFile
{
    [JsonPropertyName("filename")] public required string Filename { get; init; }

    [JsonPropertyName("size")] public required long Size { get; init; }

    [JsonPropertyName("preallocation")] public PreallocMode? Preallocation { get; init; }

    [JsonPropertyName("nocow")] public bool? Nocow { get; init; }

    [JsonPropertyName("extent-size-hint")] public long? ExtentSizeHint { get; init; }
}

/// <summary>Driver members for "qcow2" (BlockdevCreateOptionsQcow2).</summary>
public sealed record BlockdevCreateOptionsQcow2
{
    [JsonPropertyName("file")] public required BlockdevRef File { get; init; }

    [JsonPropertyName("data-file")] public BlockdevRef? DataFile { get; init; }

    [JsonPropertyName("data-file-raw")] public bool? DataFileRaw { get; init; }

    [JsonPropertyName("extended-l2")] public bool? ExtendedL2 { get; init; }

    [JsonPropertyName("size")] public required long Size { get; init; }

    [JsonPropertyName("version")] public BlockdevQcow2Version? Version { get; init; }

    [JsonPropertyName("backing-file")] public string? BackingFile { get; init; }

    /// <summary>Format of the backing file (a BlockdevDriver name).</summary>
    [JsonPropertyName("backing-fmt")] public string? BackingFmt { get; init; }

    /// <summary>QCryptoBlockCreateOptions.</summary>
    [JsonPropertyName("encrypt")] public JsonObject? Encrypt { get; init; }

    [JsonPropertyName("cluster-size")] public long? ClusterSize { get; init; }

    [JsonPropertyName("preallocation")] public PreallocMode? Preallocation { get; init; }

    [JsonPropertyName("lazy-refcounts")] public bool? LazyRefcounts { get; init; }

    [JsonPropertyName("refcount-bits")] public long? RefcountBits { get; init; }

    [JsonPropertyName("compression-type")] public Qcow2CompressionType? CompressionType { get; init; }
}
