using System.Text.Json;
using System.Text.Json.Serialization;

namespace Strata.Qmp;

/// <summary>QEMU's error classes (qapi/error.json, QapiErrorClass), printed by their names.</summary>
[JsonConverter(typeof(QmpErrorClassConverter))]
public enum QmpErrorClass
{
    /// <summary>Almost every error (and any class this library does not know).</summary>
    GenericError,

    /// <summary>The command does not exist, or is not available now (e.g. before capabilities negotiation).</summary>
    CommandNotFound,

    /// <summary>A device (or block job) was not found / not active.</summary>
    DeviceNotActive,

    /// <summary>A device was not found.</summary>
    DeviceNotFound,

    /// <summary>The KVM capability needed is missing.</summary>
    KVMMissingCap,
}

/// <summary>Reads and writes <see cref="QmpErrorClass"/> by name; an unknown class reads as GenericError.</summary>
public sealed class QmpErrorClassConverter : JsonConverter<QmpErrorClass>
{
    public override QmpErrorClass Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) =>
        Parse(reader.GetString());

    public override void Write(Utf8JsonWriter writer, QmpErrorClass value, JsonSerializerOptions options) =>
        writer.WriteStringValue(Name(value));

    /// <summary>The class of a name; unknown names are GenericError.</summary>
    public static QmpErrorClass Parse(string? name) => name switch
    {
        "CommandNotFound" => QmpErrorClass.CommandNotFound,
        "DeviceNotActive" => QmpErrorClass.DeviceNotActive,
        "DeviceNotFound" => QmpErrorClass.DeviceNotFound,
        "KVMMissingCap" => QmpErrorClass.KVMMissingCap,
        _ => QmpErrorClass.GenericError,
    };

    /// <summary>The wire name of a class.</summary>
    public static string Name(QmpErrorClass value) => value switch
    {
        QmpErrorClass.CommandNotFound => "CommandNotFound",
        QmpErrorClass.DeviceNotActive => "DeviceNotActive",
        QmpErrorClass.DeviceNotFound => "DeviceNotFound",
        QmpErrorClass.KVMMissingCap => "KVMMissingCap",
        _ => "GenericError",
    };
}
