using System.Text.Json.Serialization;

namespace Strata.Qmp;

// qapi/control.json, qapi/misc.json: qmp_capabilities, query-version, query-commands, quit, the greeting.

/// <summary>No arguments, or an empty return (<c>{}</c>).</summary>
public sealed record QmpEmpty
{
    public static QmpEmpty Instance { get; } = new();
}

/// <summary>Arguments of qmp_capabilities.</summary>
public sealed record QmpCapabilitiesArgs
{
    /// <summary>Capabilities to enable, e.g. <c>["oob"]</c>.</summary>
    [JsonPropertyName("enable")] public IReadOnlyList<string>? Enable { get; init; }
}

/// <summary>QMP capability names.</summary>
public static class QmpCapabilities
{
    /// <summary>Out-of-band command execution (exec-oob).</summary>
    public const string Oob = "oob";
}

/// <summary>A version triple (VersionTriple).</summary>
public sealed record VersionTriple
{
    [JsonPropertyName("major")] public long Major { get; init; }

    [JsonPropertyName("minor")] public long Minor { get; init; }

    [JsonPropertyName("micro")] public long Micro { get; init; }

    public override string ToString() => $"{Major}.{Minor}.{Micro}";
}

/// <summary>Return of query-version (VersionInfo).</summary>
public sealed record VersionInfo
{
    [JsonPropertyName("qemu")] public VersionTriple Qemu { get; init; } = new();

    /// <summary>Distribution or build string, e.g. "Debian 1:7.2+dfsg-7+deb12u18+b3".</summary>
    [JsonPropertyName("package")] public string Package { get; init; } = "";
}

/// <summary>One entry of query-commands (CommandInfo).</summary>
public sealed record CommandInfo
{
    [JsonPropertyName("name")] public string Name { get; init; } = "";
}

/// <summary>The greeting a QMP server sends on connect: <c>{"QMP": {"version": …, "capabilities": ["oob"]}}</c>.</summary>
public sealed record QmpGreeting
{
    [JsonPropertyName("QMP")] public QmpGreetingBody Qmp { get; init; } = new();
}

/// <summary>The body of the greeting.</summary>
public sealed record QmpGreetingBody
{
    [JsonPropertyName("version")] public VersionInfo Version { get; init; } = new();

    /// <summary>Capabilities the server offers (qemu-storage-daemon: "oob").</summary>
    [JsonPropertyName("capabilities")] public IReadOnlyList<string> Capabilities { get; init; } = [];
}

/// <summary>The SHUTDOWN event's data (qapi/run-state.json). qemu-storage-daemon 7.2 does not emit it.</summary>
public sealed record ShutdownEventData
{
    [JsonPropertyName("guest")] public bool Guest { get; init; }

    /// <summary>ShutdownCause, e.g. "host-qmp-quit".</summary>
    [JsonPropertyName("reason")] public string Reason { get; init; } = "";
}
