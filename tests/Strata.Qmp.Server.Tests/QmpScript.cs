using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Strata.Client.Tests;

namespace Strata.Qmp.Server.Tests;

/// <summary>How two replies must agree.</summary>
public enum Match
{
    /// <summary>The same text once normalised (same members, order, values and messages).</summary>
    Exact,

    /// <summary>The same structure (members, JSON types, array lengths) and the same error class; values may differ.</summary>
    Shape,
}

/// <summary>
/// One line sent to the monitor and how its answer (events, then the reply) is compared. A line
/// <c>#wait TEXT</c> sends nothing and reads events until one contains TEXT (a job finishing in the background).
/// </summary>
public sealed record Step(string Line, Match Match, string? Why = null)
{
    public const string WaitPrefix = "#wait ";
}

/// <summary>What a daemon answered to each step, normalised, and the files asked for, as they were at the end.</summary>
public sealed record Transcript(string Greeting, IReadOnlyList<IReadOnlyList<string>> Answers)
{
    public IReadOnlyDictionary<string, byte[]?> Files { get; init; } = new Dictionary<string, byte[]?>();
}

/// <summary>Runs a script of raw QMP lines against a daemon over its unix socket.</summary>
public static partial class QmpScript
{
    /// <param name="collect">Files of the scenario's directory to read once the steps are done (null when absent).</param>
    /// <param name="prepare">Makes more files in the scenario's directory before the first step.</param>
    /// <param name="finish">Looks at the scenario's directory after the last step, the daemon still running.</param>
    public static async Task<Transcript> RunAsync(DaemonCommand command, IReadOnlyList<Step> steps, IReadOnlyList<string>? collect = null,
        Action<string>? prepare = null, Action<string>? finish = null)
    {
        await using var daemon = await QmpDaemon.StartAsync(command);
        Tools.QemuImg("create", "-q", "-f", "qcow2", daemon.PathOf("a.qcow2"), "64M");
        Tools.QemuImg("create", "-q", "-f", "qcow2", "-b", daemon.PathOf("a.qcow2"), "-F", "qcow2", daemon.PathOf("b.qcow2"));
        Tools.QemuImg("create", "-q", "-f", "raw", daemon.PathOf("r.raw"), "1M");
        prepare?.Invoke(daemon.Directory);

        using var socket = await ConnectAsync(daemon);
        using var stream = new NetworkStream(socket);
        using var reader = new StreamReader(stream, Encoding.UTF8);
        var names = new Dictionary<string, string>();
        string Norm(string line) => Normalise(line, daemon.Directory, names);

        var greeting = Norm(await ReadLineAsync(reader) ?? throw new IOException("no greeting"));
        var answers = new List<IReadOnlyList<string>>();
        foreach (var step in steps)
        {
            if (step.Line.StartsWith(Step.WaitPrefix, StringComparison.Ordinal))
            {
                answers.Add(await WaitForAsync(reader, step.Line[Step.WaitPrefix.Length..], Norm));
                continue;
            }

            var bytes = Encoding.UTF8.GetBytes(step.Line.Replace("$D", daemon.Directory, StringComparison.Ordinal) + "\n");
            await stream.WriteAsync(bytes);
            var messages = new List<string>();
            while (true)
            {
                string? line;
                try
                {
                    line = await ReadLineAsync(reader);
                }
                catch (OperationCanceledException)
                {
                    messages.Add("<no reply within 20 s>");
                    break;
                }

                if (line is null)
                {
                    messages.Add("<connection closed>");
                    break;
                }

                messages.Add(Norm(line));
                using var doc = JsonDocument.Parse(line);
                if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("event", out _))
                {
                    break;
                }
            }

            answers.Add(messages);
        }

        finish?.Invoke(daemon.Directory);
        var files = new Dictionary<string, byte[]?>();
        foreach (var name in collect ?? [])
        {
            var path = daemon.PathOf(name);
            files[name] = File.Exists(path) ? await File.ReadAllBytesAsync(path) : null;
        }

        return new Transcript(greeting, answers) { Files = files };
    }

    /// <summary>Reads messages until one contains <paramref name="text"/> (normalised), or 20 s pass.</summary>
    private static async Task<IReadOnlyList<string>> WaitForAsync(StreamReader reader, string text, Func<string, string> norm)
    {
        var messages = new List<string>();
        while (true)
        {
            string? line;
            try
            {
                line = await ReadLineAsync(reader);
            }
            catch (OperationCanceledException)
            {
                messages.Add($"<no message with {text} within 20 s>");
                return messages;
            }

            if (line is null)
            {
                messages.Add("<connection closed>");
                return messages;
            }

            messages.Add(norm(line));
            if (messages[^1].Contains(text, StringComparison.Ordinal))
            {
                return messages;
            }
        }
    }

    private static async Task<Socket> ConnectAsync(QmpDaemon daemon)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (true)
        {
            var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                await s.ConnectAsync(new UnixDomainSocketEndPoint(daemon.SocketPath));
                return s;
            }
            catch (SocketException) when (DateTime.UtcNow < deadline && !daemon.HasExited)
            {
                s.Dispose();
                await Task.Delay(20);
            }
        }
    }

    private static async Task<string?> ReadLineAsync(StreamReader reader)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        return await reader.ReadLineAsync(cts.Token);
    }

    /// <summary>
    /// Takes out what legitimately differs: the scratch directory, timestamps, the version and package, the numbers of
    /// auto-generated node names (renamed in order of appearance), and actual-size (host allocation).
    /// </summary>
    public static string Normalise(string line, string directory, Dictionary<string, string> names)
    {
        line = line.TrimEnd('\r').Replace(directory, "$D", StringComparison.Ordinal);
        line = Timestamp().Replace(line, "\"seconds\": 0, \"microseconds\": 0");
        line = Triple().Replace(line, "{\"micro\": 0, \"minor\": 0, \"major\": 0}");
        line = Package().Replace(line, "\"package\": \"P\"");
        line = ActualSize().Replace(line, "\"actual-size\": 0");
        line = SnapshotTime().Replace(line, "\"$1\": 0");
        line = SnapshotRow().Replace(line, " DATE CLOCK");
        line = AutoName().Replace(line, m =>
        {
            if (!names.TryGetValue(m.Value, out var n))
            {
                n = "#auto" + names.Count;
                names[m.Value] = n;
            }

            return n;
        });
        return line;
    }

    [GeneratedRegex("\"seconds\": \\d+, \"microseconds\": \\d+")]
    private static partial Regex Timestamp();

    [GeneratedRegex("\\{\"micro\": \\d+, \"minor\": \\d+, \"major\": \\d+\\}")]
    private static partial Regex Triple();

    [GeneratedRegex("\"package\": \"[^\"]*\"")]
    private static partial Regex Package();

    [GeneratedRegex("\"actual-size\": \\d+")]
    private static partial Regex ActualSize();

    /// <summary>An internal snapshot's times in JSON (the wall clock; qsd's VM clock is the wall clock too).</summary>
    [GeneratedRegex("\"(date-sec|date-nsec|vm-clock-sec|vm-clock-nsec)\": \\d+")]
    private static partial Regex SnapshotTime();

    /// <summary>The DATE and VM CLOCK columns of qemu-img snapshot -l (they run together when the clock is long).</summary>
    [GeneratedRegex(" +\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d *\\d+:\\d\\d:\\d\\d\\.\\d{3}")]
    private static partial Regex SnapshotRow();

    [GeneratedRegex("#block\\d+")]
    private static partial Regex AutoName();

    /// <summary>Null when the two messages have the same structure and error class, else why not.</summary>
    public static string? CompareShape(string a, string b)
    {
        using var da = JsonDocument.Parse(a);
        using var db = JsonDocument.Parse(b);
        return Shape(da.RootElement, db.RootElement, "$");
    }

    private static string? Shape(JsonElement a, JsonElement b, string path)
    {
        if (a.ValueKind != b.ValueKind && !(a.ValueKind is JsonValueKind.True or JsonValueKind.False && b.ValueKind is JsonValueKind.True or JsonValueKind.False))
        {
            return $"{path}: {a.ValueKind} vs {b.ValueKind}";
        }

        switch (a.ValueKind)
        {
            case JsonValueKind.Object:
            {
                var ka = a.EnumerateObject().Select(p => p.Name).Order(StringComparer.Ordinal).ToArray();
                var kb = b.EnumerateObject().Select(p => p.Name).Order(StringComparer.Ordinal).ToArray();
                if (!ka.SequenceEqual(kb))
                {
                    return $"{path}: members [{string.Join(", ", ka)}] vs [{string.Join(", ", kb)}]";
                }

                foreach (var k in ka)
                {
                    if (path == "$.error" && k == "class" && a.GetProperty(k).GetString() != b.GetProperty(k).GetString())
                    {
                        return $"error class {a.GetProperty(k)} vs {b.GetProperty(k)}";
                    }

                    if (Shape(a.GetProperty(k), b.GetProperty(k), path + "." + k) is { } d)
                    {
                        return d;
                    }
                }

                return null;
            }

            case JsonValueKind.Array:
            {
                // Lists of names (permissions) may differ in length; lists of objects may not.
                bool names = a.EnumerateArray().All(x => x.ValueKind == JsonValueKind.String) && b.EnumerateArray().All(x => x.ValueKind == JsonValueKind.String);
                if (names)
                {
                    return null;
                }

                if (a.GetArrayLength() != b.GetArrayLength())
                {
                    return $"{path}: {a.GetArrayLength()} vs {b.GetArrayLength()} elements";
                }

                for (var i = 0; i < a.GetArrayLength(); i++)
                {
                    if (Shape(a[i], b[i], $"{path}[{i}]") is { } d)
                    {
                        return d;
                    }
                }

                return null;
            }

            default:
                return null;
        }
    }
}
