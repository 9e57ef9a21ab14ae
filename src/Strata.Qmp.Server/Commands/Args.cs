using System.Text.Json;
using System.Text.Json.Serialization.Metadata;

namespace Strata.Qmp.Server.Commands;

/// <summary>Reads arguments that have passed the QAPI checks, and builds return values.</summary>
internal static class Args
{
    private static readonly JsonElement EmptyObject = Parse("{}");
    private static readonly JsonElement EmptyArray = Parse("[]");

    private static JsonElement Parse(string json)
    {
        using var doc = JsonDocument.Parse(json);
        return doc.RootElement.Clone();
    }

    /// <summary><c>{}</c>.</summary>
    public static ValueTask<JsonElement> Empty => ValueTask.FromResult(EmptyObject);

    /// <summary><c>[]</c>.</summary>
    public static ValueTask<JsonElement> EmptyList => ValueTask.FromResult(EmptyArray);

    public static JsonElement Value<T>(T value, JsonTypeInfo<T> type) => JsonSerializer.SerializeToElement(value, type);

    private static bool TryGet(JsonElement args, string name, out JsonElement value)
    {
        value = default;
        return args.ValueKind == JsonValueKind.Object && args.TryGetProperty(name, out value);
    }

    public static string? Str(this JsonElement args, string name) => TryGet(args, name, out var v) ? v.GetString() : null;

    public static string ReqStr(this JsonElement args, string name) => args.Str(name) ?? throw new InvalidOperationException(name);

    public static bool? Bool(this JsonElement args, string name) => TryGet(args, name, out var v) ? v.GetBoolean() : null;

    public static long? Long(this JsonElement args, string name) => TryGet(args, name, out var v) ? v.GetInt64() : null;

    public static ulong? ULong(this JsonElement args, string name) =>
        TryGet(args, name, out var v) ? (v.TryGetUInt64(out var u) ? u : unchecked((ulong)v.GetInt64())) : null;

    public static JsonElement? Member(this JsonElement args, string name) => TryGet(args, name, out var v) ? v : null;
}
