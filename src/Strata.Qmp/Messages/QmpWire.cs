using System.Buffers;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Strata.Qmp.Json;

namespace Strata.Qmp;

/// <summary>
/// Builds QMP messages as the bytes QEMU would send (without the line end): members are
/// inserted in the order QEMU inserts them, then printed by <see cref="QemuJsonWriter"/>, e.g.
/// <c>{"return": {}, "id": 1}</c>, <c>{"id": 3, "error": {"class": "GenericError", "desc": "…"}}</c>,
/// <c>{"timestamp": {"seconds": …, "microseconds": …}, "event": "…", "data": {…}}</c>.
/// </summary>
public static class QmpWire
{
    private static readonly JsonWriterOptions WriterOptions = new()
    {
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        MaxDepth = 1100,
    };

    /// <summary>The greeting.</summary>
    public static byte[] Greeting(QmpGreeting greeting) =>
        Build(w => JsonSerializer.Serialize(w, greeting, QmpJsonContext.Default.QmpGreeting));

    /// <summary>A success reply.</summary>
    public static byte[] Return(JsonElement value, JsonElement? id = null) => Build(w =>
    {
        w.WriteStartObject();
        w.WritePropertyName("return");
        value.WriteTo(w);
        WriteId(w, id);
        w.WriteEndObject();
    });

    /// <summary>A success reply with a typed value.</summary>
    public static byte[] Return<T>(T value, JsonTypeInfo<T> typeInfo, JsonElement? id = null) => Build(w =>
    {
        w.WriteStartObject();
        w.WritePropertyName("return");
        JsonSerializer.Serialize(w, value, typeInfo);
        WriteId(w, id);
        w.WriteEndObject();
    });

    /// <summary>An error reply.</summary>
    public static byte[] Error(QmpError error, JsonElement? id = null) => Build(w =>
    {
        w.WriteStartObject();
        w.WritePropertyName("error");
        JsonSerializer.Serialize(w, error, QmpJsonContext.Default.QmpError);
        WriteId(w, id);
        w.WriteEndObject();
    });

    /// <summary>An event; <paramref name="data"/> Undefined for an event without data.</summary>
    public static byte[] Event(string name, JsonElement data, QmpTimestamp timestamp) => Build(w =>
    {
        w.WriteStartObject();
        w.WriteString("event", name);
        w.WritePropertyName("timestamp");
        JsonSerializer.Serialize(w, timestamp, QmpJsonContext.Default.QmpTimestamp);
        if (data.ValueKind != JsonValueKind.Undefined)
        {
            w.WritePropertyName("data");
            data.WriteTo(w);
        }

        w.WriteEndObject();
    });

    /// <summary>An event with typed data.</summary>
    public static byte[] Event<T>(string name, T data, JsonTypeInfo<T> typeInfo, QmpTimestamp timestamp) =>
        Event(name, JsonSerializer.SerializeToElement(data, typeInfo), timestamp);

    /// <summary>A command; <paramref name="arguments"/> Undefined (or an empty object) for none.</summary>
    public static byte[] Command(string command, JsonElement arguments, JsonElement? id = null, bool oob = false) => Build(w =>
    {
        w.WriteStartObject();
        w.WriteString(oob ? "exec-oob" : "execute", command);
        if (arguments.ValueKind == JsonValueKind.Object && arguments.EnumerateObject().Any())
        {
            w.WritePropertyName("arguments");
            arguments.WriteTo(w);
        }

        WriteId(w, id);
        w.WriteEndObject();
    });

    /// <summary>A command with typed arguments (an argument object without members is left out).</summary>
    public static byte[] Command<T>(string command, T arguments, JsonTypeInfo<T> typeInfo, JsonElement? id = null, bool oob = false) =>
        Command(command, JsonSerializer.SerializeToElement(arguments, typeInfo), id, oob);

    private static void WriteId(Utf8JsonWriter w, JsonElement? id)
    {
        if (id is { } value && value.ValueKind != JsonValueKind.Undefined)
        {
            w.WritePropertyName("id");
            value.WriteTo(w);
        }
    }

    private static byte[] Build(Action<Utf8JsonWriter> write)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        using (var writer = new Utf8JsonWriter(buffer, WriterOptions))
        {
            write(writer);
        }

        using var doc = JsonDocument.Parse(buffer.WrittenMemory, new JsonDocumentOptions { MaxDepth = 1100 });
        return QemuJsonWriter.ToUtf8Bytes(doc.RootElement);
    }
}
