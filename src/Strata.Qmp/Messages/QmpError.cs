using System.Text.Json.Serialization;

namespace Strata.Qmp;

/// <summary>The body of an error reply: <c>{"class": "GenericError", "desc": "..."}</c>.</summary>
public sealed record QmpError(
    [property: JsonPropertyName("class")] QmpErrorClass Class,
    [property: JsonPropertyName("desc")] string Desc)
{
    /// <summary>A GenericError with the given description.</summary>
    public static QmpError Generic(string desc) => new(QmpErrorClass.GenericError, desc);

    public override string ToString() => $"{QmpErrorClassConverter.Name(Class)}: {Desc}";
}

/// <summary>
/// The descriptions QEMU 7.2's monitor and dispatcher use for protocol-level errors
/// (monitor/qmp.c, qapi/qmp-dispatch.c), checked against qemu-storage-daemon 7.2.
/// </summary>
public static class QmpErrors
{
    /// <summary>Input that is valid JSON but not an object (answered without id).</summary>
    public static QmpError NotAnObject { get; } = QmpError.Generic("QMP input must be a JSON object");

    /// <summary>An object without "execute" (or "exec-oob").</summary>
    public static QmpError LacksExecute { get; } = QmpError.Generic("QMP input lacks member 'execute'");

    /// <summary>"arguments" that is not an object.</summary>
    public static QmpError ArgumentsNotObject { get; } = QmpError.Generic("QMP input member 'arguments' must be an object");

    /// <summary>Any command but qmp_capabilities before negotiation.</summary>
    public static QmpError ExpectingCapabilities { get; } =
        new(QmpErrorClass.CommandNotFound, "Expecting capabilities negotiation with 'qmp_capabilities'");

    /// <summary>qmp_capabilities after negotiation.</summary>
    public static QmpError CapabilitiesAlreadyNegotiated { get; } =
        new(QmpErrorClass.CommandNotFound, "Capabilities negotiation is already complete, command ignored");

    /// <summary>A member other than execute, exec-oob, arguments and id.</summary>
    public static QmpError UnexpectedMember(string name) => QmpError.Generic($"QMP input member '{name}' is unexpected");

    /// <summary>"execute" or "exec-oob" that is not a string.</summary>
    public static QmpError MemberNotString(string name) => QmpError.Generic($"QMP input member '{name}' must be a string");

    /// <summary>Both "execute" and "exec-oob".</summary>
    public static QmpError MemberClash(string name, string other) =>
        QmpError.Generic($"QMP input member '{name}' clashes with '{other}'");

    /// <summary>An unknown command.</summary>
    public static QmpError CommandNotFound(string command) =>
        new(QmpErrorClass.CommandNotFound, $"The command {command} has not been found");

    /// <summary>exec-oob of a command that does not allow OOB.</summary>
    public static QmpError NoOob(string command) => QmpError.Generic($"The command {command} does not support OOB");

    /// <summary>An argument the command does not have.</summary>
    public static QmpError UnexpectedParameter(string name) => QmpError.Generic($"Parameter '{name}' is unexpected");

    /// <summary>A mandatory argument missing.</summary>
    public static QmpError MissingParameter(string name) => QmpError.Generic($"Parameter '{name}' is missing");

    /// <summary>An argument of the wrong JSON type ("string", "integer", "boolean", "object", "array", "number").</summary>
    public static QmpError InvalidParameterType(string name, string expected) =>
        QmpError.Generic($"Invalid parameter type for '{name}', expected: {expected}");
}
