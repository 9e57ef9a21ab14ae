using System.Diagnostics.CodeAnalysis;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Strata.Qmp.Json;

namespace Strata.Qmp;

/// <summary>What a QMP message is.</summary>
public enum QmpMessageKind
{
    /// <summary>Not recognisable (not an object, or none of the known members).</summary>
    Unknown,

    /// <summary><c>{"QMP": …}</c>, sent by the server on connect.</summary>
    Greeting,

    /// <summary><c>{"return": …, "id": …}</c>.</summary>
    Return,

    /// <summary><c>{"error": {"class", "desc"}, "id": …}</c>.</summary>
    Error,

    /// <summary><c>{"event": …, "data": …, "timestamp": …}</c>.</summary>
    Event,

    /// <summary><c>{"execute": …}</c> or <c>{"exec-oob": …}</c>, sent by the client.</summary>
    Command,
}

/// <summary>Recognises QMP messages.</summary>
public static class QmpMessage
{
    public static QmpMessageKind Classify(JsonElement message)
    {
        if (message.ValueKind != JsonValueKind.Object)
        {
            return QmpMessageKind.Unknown;
        }

        if (message.TryGetProperty("return", out _))
        {
            return QmpMessageKind.Return;
        }

        if (message.TryGetProperty("error", out _))
        {
            return QmpMessageKind.Error;
        }

        if (message.TryGetProperty("event", out _))
        {
            return QmpMessageKind.Event;
        }

        if (message.TryGetProperty("QMP", out _))
        {
            return QmpMessageKind.Greeting;
        }

        return message.TryGetProperty("execute", out _) || message.TryGetProperty("exec-oob", out _)
            ? QmpMessageKind.Command
            : QmpMessageKind.Unknown;
    }
}

/// <summary>An asynchronous event from the server. Its JSON is its own (cloned), independent of any frame.</summary>
public sealed class QmpEvent
{
    public QmpEvent(string name, JsonElement data, QmpTimestamp timestamp)
    {
        Name = name ?? throw new ArgumentNullException(nameof(name));
        Data = data;
        Timestamp = timestamp ?? throw new ArgumentNullException(nameof(timestamp));
    }

    /// <summary>The event name, e.g. "JOB_STATUS_CHANGE" (<see cref="QmpEventNames"/>).</summary>
    public string Name { get; }

    /// <summary>The event's data; <see cref="JsonValueKind.Undefined"/> for an event without data.</summary>
    public JsonElement Data { get; }

    public QmpTimestamp Timestamp { get; }

    /// <summary>The data read as <typeparamref name="T"/>.</summary>
    public T DataAs<T>(JsonTypeInfo<T> typeInfo) =>
        (Data.ValueKind == JsonValueKind.Undefined ? default : Data.Deserialize(typeInfo))
        ?? throw new JsonException($"event {Name} has no data");

    /// <summary>Reads an event message.</summary>
    public static QmpEvent Parse(JsonElement message)
    {
        var name = message.GetProperty("event").GetString() ?? throw new JsonException("event name is not a string");
        var data = message.TryGetProperty("data", out var d) ? d.Clone() : default;
        var ts = message.TryGetProperty("timestamp", out var t)
            ? t.Deserialize(QmpJsonContext.Default.QmpTimestamp) ?? new QmpTimestamp()
            : new QmpTimestamp();
        return new QmpEvent(name, data, ts);
    }

    /// <summary>The event as QEMU prints it.</summary>
    public override string ToString() => System.Text.Encoding.ASCII.GetString(QmpWire.Event(Name, Data, Timestamp));
}

/// <summary>A reply to a command: a return value or an error, and the id echoed.</summary>
public sealed class QmpResponse
{
    private QmpResponse(JsonElement value, QmpError? error, JsonElement? id)
    {
        Return = value;
        Error = error;
        Id = id;
    }

    /// <summary>The return value; <see cref="JsonValueKind.Undefined"/> for an error.</summary>
    public JsonElement Return { get; }

    /// <summary>The error, or null for success.</summary>
    public QmpError? Error { get; }

    [MemberNotNullWhen(true, nameof(Error))]
    public bool IsError => Error is not null;

    /// <summary>The id of the request, or null when the reply has none.</summary>
    public JsonElement? Id { get; }

    public static QmpResponse Success(JsonElement value, JsonElement? id = null) => new(value, null, id);

    public static QmpResponse Failure(QmpError error, JsonElement? id = null) =>
        new(default, error ?? throw new ArgumentNullException(nameof(error)), id);

    /// <summary>Reads a return or error message (cloning what it keeps).</summary>
    public static QmpResponse Parse(JsonElement message)
    {
        JsonElement? id = message.TryGetProperty("id", out var i) ? i.Clone() : null;
        if (message.TryGetProperty("error", out var e))
        {
            var error = e.Deserialize(QmpJsonContext.Default.QmpError) ?? QmpError.Generic("");
            return new QmpResponse(default, error, id);
        }

        return new QmpResponse(message.GetProperty("return").Clone(), null, id);
    }

    /// <summary>The reply as QEMU prints it.</summary>
    public override string ToString() => System.Text.Encoding.ASCII.GetString(
        IsError ? QmpWire.Error(Error, Id) : QmpWire.Return(Return, Id));
}

/// <summary>
/// A command received by a server, checked as QEMU's qmp_dispatch does (qapi/qmp-dispatch.c).
/// </summary>
public sealed class QmpRequest
{
    private QmpRequest(string command, bool isOob, JsonElement arguments, JsonElement? id)
    {
        Command = command;
        IsOob = isOob;
        Arguments = arguments;
        Id = id;
    }

    public string Command { get; }

    /// <summary>True for exec-oob.</summary>
    public bool IsOob { get; }

    /// <summary>The arguments object; <see cref="JsonValueKind.Undefined"/> when absent.</summary>
    public JsonElement Arguments { get; }

    /// <summary>The id to echo in the reply, or null.</summary>
    public JsonElement? Id { get; }

    /// <summary>
    /// Checks a message as QEMU does: it must be an object; its members are examined in
    /// QEMU's order (<see cref="QDictOrder"/>): "execute" (and "exec-oob" when OOB is
    /// enabled) must be a string and not both, "arguments" an object, "id" anything, nothing
    /// else; one of execute / exec-oob must be there. On failure, <paramref name="error"/> is
    /// QEMU's error and <paramref name="id"/> the id to echo (none for a non-object).
    /// The elements returned refer to <paramref name="message"/>'s document.
    /// </summary>
    public static bool TryParse(
        JsonElement message,
        bool oobEnabled,
        [NotNullWhen(true)] out QmpRequest? request,
        [NotNullWhen(false)] out QmpError? error,
        out JsonElement? id)
    {
        request = null;
        id = null;
        if (message.ValueKind != JsonValueKind.Object)
        {
            error = QmpErrors.NotAnObject;
            return false;
        }

        var names = new List<string>();
        var values = new List<JsonElement>();
        foreach (var p in message.EnumerateObject())
        {
            names.Add(p.Name);
            values.Add(p.Value);
            if (p.Name == "id")
            {
                id = p.Value;
            }
        }

        string? execKey = null;
        string? command = null;
        JsonElement arguments = default;
        foreach (var i in QDictOrder.Order(names))
        {
            var name = names[i];
            var value = values[i];
            if (name == "execute" || (name == "exec-oob" && oobEnabled))
            {
                if (value.ValueKind != JsonValueKind.String)
                {
                    error = QmpErrors.MemberNotString(name);
                    return false;
                }

                if (execKey is not null)
                {
                    error = QmpErrors.MemberClash(name, execKey);
                    return false;
                }

                execKey = name;
                command = value.GetString();
            }
            else if (name == "arguments")
            {
                if (value.ValueKind != JsonValueKind.Object)
                {
                    error = QmpErrors.ArgumentsNotObject;
                    return false;
                }

                arguments = value;
            }
            else if (name != "id")
            {
                error = QmpErrors.UnexpectedMember(name);
                return false;
            }
        }

        if (execKey is null || command is null)
        {
            error = QmpErrors.LacksExecute;
            return false;
        }

        error = null;
        request = new QmpRequest(command, execKey == "exec-oob", arguments, id);
        return true;
    }
}
