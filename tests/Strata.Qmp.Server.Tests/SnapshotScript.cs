using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Strata.Client.Tests;

namespace Strata.Qmp.Server.Tests;

/// <summary>
/// A scenario of the snapshot suite: steps (QMP lines, or "img …" for qemu-img and "io EXPORT CMD" for qemu-io over
/// the daemon's NBD socket, both run in the daemon's directory), and the overlay files qemu-storage-daemon leaves
/// behind after failed transactions (Strata removes what it created; the only difference allowed on disk).
/// </summary>
public sealed record SnapshotScenario(Step[] Steps, string[] QemuLeavesBehind);

/// <summary>One daemon driven through a scenario: its answers, then its directory once it has quit.</summary>
public sealed class ScriptedDaemon : IAsyncDisposable
{
    private readonly QmpDaemon _daemon;
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly StreamReader _reader;
    private readonly Dictionary<string, string> _names = [];

    private ScriptedDaemon(QmpDaemon daemon, Socket socket)
    {
        _daemon = daemon;
        _socket = socket;
        _stream = new NetworkStream(socket);
        _reader = new StreamReader(_stream, Encoding.UTF8);
    }

    public string Directory => _daemon.Directory;

    /// <summary>Starts the daemon in a fresh directory holding a.qcow2 (4M, data in its first MiB), b.qcow2 (backed by
    /// "a.qcow2"), c.qcow2 (4M) and r.raw (1M).</summary>
    public static async Task<ScriptedDaemon> StartAsync(DaemonCommand command)
    {
        var daemon = await QmpDaemon.StartAsync(command);
        string dir = daemon.Directory;
        QemuTools.RunIn(dir, "qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "4M").EnsureSuccess();
        QemuTools.RunIn(dir, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", "a.qcow2").EnsureSuccess();
        QemuTools.RunIn(dir, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2").EnsureSuccess();
        QemuTools.RunIn(dir, "qemu-img", "create", "-q", "-f", "qcow2", "c.qcow2", "4M").EnsureSuccess();
        QemuTools.RunIn(dir, "qemu-img", "create", "-q", "-f", "raw", "r.raw", "1M").EnsureSuccess();
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (true)
        {
            var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                await s.ConnectAsync(new UnixDomainSocketEndPoint(daemon.SocketPath));
                var d = new ScriptedDaemon(daemon, s);
                await d.ReadLineAsync(); // greeting
                return d;
            }
            catch (SocketException) when (DateTime.UtcNow < deadline && !daemon.HasExited)
            {
                s.Dispose();
                await Task.Delay(20);
            }
        }
    }

    private async Task<string?> ReadLineAsync()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        return await _reader.ReadLineAsync(cts.Token);
    }

    private string Norm(string text) => QmpScript.Normalise(text, Directory, _names);

    /// <summary>Runs one step; the answer is normalised (directory, auto node names, timings).</summary>
    public async Task<IReadOnlyList<string>> StepAsync(string step)
    {
        if (step.StartsWith("img ", StringComparison.Ordinal))
        {
            var r = QemuTools.RunIn(Directory, "qemu-img", step[4..].Replace("$D", Directory, StringComparison.Ordinal).Split(' '));
            return [$"exit {r.ExitCode}: {Norm(r.StdOut + r.StdErr).Trim()}"];
        }

        if (step.StartsWith("sh ", StringComparison.Ordinal))
        {
            // A shell line in the daemon's directory (nbdinfo --map over the socket, preparing a file with QEMU's tools).
            var r = QemuTools.RunIn(Directory, "sh", "-c", step[3..].Replace("$D", Directory, StringComparison.Ordinal));
            return [$"exit {r.ExitCode}: {Norm(r.StdOut + r.StdErr).Trim()}"];
        }

        if (step.StartsWith("mkdir ", StringComparison.Ordinal))
        {
            System.IO.Directory.CreateDirectory(Path.Combine(Directory, step[6..]));
            return ["mkdir"];
        }

        if (step.StartsWith("file ", StringComparison.Ordinal))
        {
            // "file NAME TEXT": writes TEXT (with \n for line breaks) to NAME in the daemon's directory.
            var parts = step.Split(' ', 3);
            File.WriteAllText(Path.Combine(Directory, parts[1]), parts[2].Replace("\\n", "\n", StringComparison.Ordinal));
            return ["file"];
        }

        if (step.StartsWith("io ", StringComparison.Ordinal) || step.StartsWith("iok ", StringComparison.Ordinal))
        {
            // "iok": qemu-io in writeback mode (no FUA) that kills itself afterwards, so no flush reaches the export.
            var parts = step.Split(' ', 3);
            bool noFlush = parts[0] == "iok";
            string[] cache = noFlush ? ["-t", "writeback"] : [];
            string[] kill = noFlush ? ["-c", "sigraise 9"] : [];
            var r = QemuTools.RunIn(Directory, "qemu-io", [.. cache, "-f", "raw", "-c", parts[2], .. kill, $"nbd+unix:///{parts[1]}?socket={Directory}/nbd.sock"]);
            var lines = (r.StdOut + r.StdErr).Split('\n').Where(l => l.Length > 0 && !l.Contains(" sec (", StringComparison.Ordinal));
            return [$"exit {r.ExitCode}: {Norm(string.Join(" | ", lines))}"];
        }

        await _stream.WriteAsync(Encoding.UTF8.GetBytes(step.Replace("$D", Directory, StringComparison.Ordinal) + "\n"));
        var messages = new List<string>();
        while (true)
        {
            var line = await ReadLineAsync();
            if (line is null)
            {
                messages.Add("<connection closed>");
                break;
            }

            messages.Add(Norm(line));
            using var doc = JsonDocument.Parse(line);
            if (!doc.RootElement.TryGetProperty("event", out _))
            {
                break;
            }
        }

        return messages;
    }

    /// <summary>Quits the daemon (images flushed and closed) and waits for it to exit.</summary>
    public async Task QuitAsync()
    {
        await StepAsync("""{"execute":"quit"}""");
        await _daemon.WaitForExitAsync(TimeSpan.FromSeconds(30));
    }

    /// <summary>Every file of the directory but sockets, relative to it, sorted.</summary>
    public SortedSet<string> Files() => new(
        System.IO.Directory.EnumerateFiles(Directory, "*", SearchOption.AllDirectories)
            .Where(f => !f.EndsWith(".sock", StringComparison.Ordinal))
            .Select(f => Path.GetRelativePath(Directory, f)),
        StringComparer.Ordinal);

    /// <summary>qemu-img info --backing-chain --output=json of a file, normalised (actual sizes are the host's business).</summary>
    public string Info(string file)
    {
        var r = QemuTools.RunIn(Directory, "qemu-img", "info", "--backing-chain", "--output=json", file);
        var text = QmpScript.Normalise(r.StdOut + r.StdErr, Directory, []);
        return $"exit {r.ExitCode}: " + System.Text.RegularExpressions.Regex.Replace(text, "\"actual-size\": \\d+", "\"actual-size\": 0");
    }

    public async ValueTask DisposeAsync()
    {
        _reader.Dispose();
        await _stream.DisposeAsync();
        _socket.Dispose();
        await _daemon.DisposeAsync();
    }
}
