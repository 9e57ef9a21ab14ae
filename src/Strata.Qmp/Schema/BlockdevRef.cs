using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;

namespace Strata.Qmp;

/// <summary>
/// BlockdevRef: a child given either by node name (a JSON string) or defined inline
/// (a BlockdevOptions object). Strings convert implicitly.
/// </summary>
[JsonConverter(typeof(BlockdevRefConverter))]
public sealed record BlockdevRef
{
    private BlockdevRef(string? reference, BlockdevOptions? definition)
    {
        Reference = reference;
        Definition = definition;
    }

    /// <summary>The node name referred to, or null for an inline definition.</summary>
    public string? Reference { get; }

    /// <summary>The inline definition, or null for a reference.</summary>
    public BlockdevOptions? Definition { get; }

    public static BlockdevRef Node(string nodeName) => new(nodeName ?? throw new ArgumentNullException(nameof(nodeName)), null);

    public static BlockdevRef Inline(BlockdevOptions options) => new(null, options ?? throw new ArgumentNullException(nameof(options)));

    public static implicit operator BlockdevRef(string nodeName) => Node(nodeName);

    public static implicit operator BlockdevRef(BlockdevOptions options) => Inline(options);

    public override string ToString() => Reference ?? $"{{driver: {Definition!.Driver}}}";
}

/// <summary>
/// BlockdevRefOrNull: like <see cref="BlockdevRef"/>, or JSON null (e.g. <c>"backing": null</c>: no backing file).
/// </summary>
[JsonConverter(typeof(BlockdevRefOrNullConverter))]
public sealed record BlockdevRefOrNull
{
    private BlockdevRefOrNull(BlockdevRef? value) => Value = value;

    /// <summary>JSON null.</summary>
    public static BlockdevRefOrNull Null { get; } = new((BlockdevRef?)null);

    /// <summary>The reference or definition; null for JSON null.</summary>
    public BlockdevRef? Value { get; }

    public bool IsNull => Value is null;

    public static implicit operator BlockdevRefOrNull(string nodeName) => new(BlockdevRef.Node(nodeName));

    public static implicit operator BlockdevRefOrNull(BlockdevOptions options) => new(BlockdevRef.Inline(options));

    public static implicit operator BlockdevRefOrNull(BlockdevRef value) => new(value ?? throw new ArgumentNullException(nameof(value)));

    public override string ToString() => Value?.ToString() ?? "null";
}

/// <summary>Reads and writes <see cref="BlockdevRef"/> (string or object).</summary>
public sealed class BlockdevRefConverter : JsonConverter<BlockdevRef>
{
    public override BlockdevRef? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) =>
        reader.TokenType switch
        {
            JsonTokenType.String => BlockdevRef.Node(reader.GetString()!),
            JsonTokenType.StartObject => BlockdevRef.Inline(JsonSerializer.Deserialize(ref reader, OptionsInfo(options))!),
            _ => throw new JsonException("BlockdevRef must be a node name (string) or a BlockdevOptions object"),
        };

    public override void Write(Utf8JsonWriter writer, BlockdevRef value, JsonSerializerOptions options)
    {
        if (value.Reference is not null)
        {
            writer.WriteStringValue(value.Reference);
        }
        else
        {
            JsonSerializer.Serialize(writer, value.Definition!, OptionsInfo(options));
        }
    }

    internal static JsonTypeInfo<BlockdevOptions> OptionsInfo(JsonSerializerOptions options) =>
        (JsonTypeInfo<BlockdevOptions>)options.GetTypeInfo(typeof(BlockdevOptions));
}

/// <summary>Reads and writes <see cref="BlockdevRefOrNull"/> (string, object or null).</summary>
public sealed class BlockdevRefOrNullConverter : JsonConverter<BlockdevRefOrNull>
{
    public override bool HandleNull => true;

    public override BlockdevRefOrNull? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) =>
        reader.TokenType switch
        {
            JsonTokenType.Null => BlockdevRefOrNull.Null,
            JsonTokenType.String => reader.GetString()!,
            JsonTokenType.StartObject => JsonSerializer.Deserialize(ref reader, BlockdevRefConverter.OptionsInfo(options))!,
            _ => throw new JsonException("BlockdevRefOrNull must be a node name (string), a BlockdevOptions object or null"),
        };

    public override void Write(Utf8JsonWriter writer, BlockdevRefOrNull? value, JsonSerializerOptions options)
    {
        if (value?.Value is not { } r)
        {
            writer.WriteNullValue();
        }
        else if (r.Reference is not null)
        {
            writer.WriteStringValue(r.Reference);
        }
        else
        {
            JsonSerializer.Serialize(writer, r.Definition!, BlockdevRefConverter.OptionsInfo(options));
        }
    }
}
