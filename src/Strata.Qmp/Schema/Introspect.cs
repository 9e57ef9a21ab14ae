using System.Text.Json;
using System.Text.Json.Serialization;

namespace Strata.Qmp;

// qapi/introspect.json: query-qmp-schema. The union SchemaInfo is flattened: the members of
// every meta-type are optional here, in the schema's order.

/// <summary>SchemaMetaType.</summary>
[JsonConverter(typeof(QapiEnumConverter<SchemaMetaType>))]
public enum SchemaMetaType
{
    Builtin,
    Enum,
    Array,
    Object,
    Alternate,
    Command,
    Event,
}

/// <summary>One entity of the schema (SchemaInfo and its variants, flattened).</summary>
public sealed record SchemaInfo
{
    [JsonPropertyName("name")] public string Name { get; init; } = "";

    [JsonPropertyName("meta-type")] public SchemaMetaType MetaType { get; init; }

    [JsonPropertyName("features")] public IReadOnlyList<string>? Features { get; init; }

    /// <summary>builtin: JSON type ("string", "int", "number", "boolean", "null", "object", "array", "value").</summary>
    [JsonPropertyName("json-type")] public string? JsonType { get; init; }

    /// <summary>enum: its members (name, features); object: its members (name, type, default, features); alternate: its members (type).</summary>
    [JsonPropertyName("members")] public IReadOnlyList<SchemaInfoMember>? Members { get; init; }

    /// <summary>enum: the values (deprecated duplicate of members).</summary>
    [JsonPropertyName("values")] public IReadOnlyList<string>? Values { get; init; }

    /// <summary>array: element type name.</summary>
    [JsonPropertyName("element-type")] public string? ElementType { get; init; }

    /// <summary>object: discriminator member of a union.</summary>
    [JsonPropertyName("tag")] public string? Tag { get; init; }

    /// <summary>object: the variants of a union.</summary>
    [JsonPropertyName("variants")] public IReadOnlyList<SchemaInfoObjectVariant>? Variants { get; init; }

    /// <summary>command, event: argument type name.</summary>
    [JsonPropertyName("arg-type")] public string? ArgType { get; init; }

    /// <summary>command: return type name.</summary>
    [JsonPropertyName("ret-type")] public string? RetType { get; init; }

    /// <summary>command: whether exec-oob is allowed.</summary>
    [JsonPropertyName("allow-oob")] public bool? AllowOob { get; init; }
}

/// <summary>A member of an enum (SchemaInfoEnumMember), object (SchemaInfoObjectMember) or alternate (SchemaInfoAlternateMember).</summary>
public sealed record SchemaInfoMember
{
    [JsonPropertyName("name")] public string? Name { get; init; }

    [JsonPropertyName("type")] public string? Type { get; init; }

    /// <summary>
    /// object members: present (always JSON null in QEMU 7.2) exactly when the member is
    /// optional; <see cref="JsonValueKind.Undefined"/> when absent.
    /// </summary>
    [JsonPropertyName("default")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public JsonElement Default { get; init; }

    [JsonPropertyName("features")] public IReadOnlyList<string>? Features { get; init; }

    /// <summary>True for an optional object member.</summary>
    [JsonIgnore] public bool IsOptional => Default.ValueKind != JsonValueKind.Undefined;
}

/// <summary>A variant of a union (SchemaInfoObjectVariant).</summary>
public sealed record SchemaInfoObjectVariant
{
    [JsonPropertyName("case")] public string Case { get; init; } = "";

    [JsonPropertyName("type")] public string Type { get; init; } = "";
}
