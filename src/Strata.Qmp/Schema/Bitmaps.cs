using System.Text.Json;
using System.Text.Json.Serialization;

namespace Strata.Qmp;

// qapi/block-core.json: block-dirty-bitmap-add/remove/clear/enable/disable/merge.

/// <summary>Arguments of block-dirty-bitmap-add (BlockDirtyBitmapAdd).</summary>
public sealed record BlockDirtyBitmapAddArgs
{
    [JsonPropertyName("node")] public required string Node { get; init; }

    [JsonPropertyName("name")] public required string Name { get; init; }

    [JsonPropertyName("granularity")] public long? Granularity { get; init; }

    [JsonPropertyName("persistent")] public bool? Persistent { get; init; }

    [JsonPropertyName("disabled")] public bool? Disabled { get; init; }
}

/// <summary>Arguments of block-dirty-bitmap-remove, -clear, -enable and -disable (BlockDirtyBitmap).</summary>
public sealed record BlockDirtyBitmapArgs
{
    [JsonPropertyName("node")] public required string Node { get; init; }

    [JsonPropertyName("name")] public required string Name { get; init; }
}

/// <summary>Arguments of block-dirty-bitmap-merge (BlockDirtyBitmapMerge).</summary>
public sealed record BlockDirtyBitmapMergeArgs
{
    [JsonPropertyName("node")] public required string Node { get; init; }

    [JsonPropertyName("target")] public required string Target { get; init; }

    [JsonPropertyName("bitmaps")] public required IReadOnlyList<BlockDirtyBitmapOrStr> Bitmaps { get; init; }
}

/// <summary>
/// BlockDirtyBitmapOrStr: a bitmap of the same node by name (a JSON string), or of any node
/// (<c>{"node": …, "name": …}</c>). Strings convert implicitly.
/// </summary>
[JsonConverter(typeof(BlockDirtyBitmapOrStrConverter))]
public sealed record BlockDirtyBitmapOrStr
{
    /// <summary>The node, or null for a bitmap of the same node given by name only.</summary>
    public string? Node { get; init; }

    public required string Name { get; init; }

    public static implicit operator BlockDirtyBitmapOrStr(string name) => new() { Name = name };

    public static BlockDirtyBitmapOrStr Of(string node, string name) => new() { Node = node, Name = name };
}

/// <summary>Reads and writes <see cref="BlockDirtyBitmapOrStr"/>.</summary>
public sealed class BlockDirtyBitmapOrStrConverter : JsonConverter<BlockDirtyBitmapOrStr>
{
    public override BlockDirtyBitmapOrStr? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        if (reader.TokenType == JsonTokenType.String)
        {
            return reader.GetString()!;
        }

        if (reader.TokenType != JsonTokenType.StartObject)
        {
            throw new JsonException("a bitmap must be a name or {\"node\", \"name\"}");
        }

        string? node = null, name = null;
        while (reader.Read() && reader.TokenType != JsonTokenType.EndObject)
        {
            var key = reader.GetString();
            reader.Read();
            switch (key)
            {
                case "node":
                    node = reader.GetString();
                    break;
                case "name":
                    name = reader.GetString();
                    break;
                default:
                    reader.Skip();
                    break;
            }
        }

        return new BlockDirtyBitmapOrStr { Node = node, Name = name ?? throw new JsonException("bitmap lacks 'name'") };
    }

    public override void Write(Utf8JsonWriter writer, BlockDirtyBitmapOrStr value, JsonSerializerOptions options)
    {
        if (value.Node is null)
        {
            writer.WriteStringValue(value.Name);
            return;
        }

        writer.WriteStartObject();
        writer.WriteString("node", value.Node);
        writer.WriteString("name", value.Name);
        writer.WriteEndObject();
    }
}
