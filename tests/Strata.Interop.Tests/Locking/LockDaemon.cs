using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;

namespace Strata.Interop.Tests.Locking;

/// <summary>
/// qemu-storage-daemon or strata-daemon started with a command line (and a QMP monitor) in a test directory; ready once
/// its pidfile exists, or failed with its exit code and stderr. Disposal kills it (its locks go with it).
/// </summary>
public sealed class LockDaemon : IAsyncDisposable
{
    private readonly BackgroundProcess _process;
    private Socket? _qmp;
    private StreamReader? _reader;

    private LockDaemon(BackgroundProcess process, string socket)
    {
        _process = process;
        SocketPath = socket;
    }

    public string SocketPath { get; }
    public bool HasExited => _process.HasExited;
    public int ExitCode => _process.ExitCode;

    public string StandardError => _process.StandardError;

    /// <summary>The strata-daemon built with these tests (copied next to them by the project reference).</summary>
    public static string StrataDll
    {
        get
        {
            var dll = Path.Combine(AppContext.BaseDirectory, "strata-daemon.dll");
            return File.Exists(dll) ? dll : throw new FileNotFoundException("strata-daemon.dll is not next to the tests", dll);
        }
    }

    /// <summary>Starts the daemon; returns once it is ready or has exited (check <see cref="HasExited"/>).</summary>
    public static async Task<LockDaemon> StartAsync(bool strata, string dir, params string[] args)
    {
        string id = Guid.NewGuid().ToString("N")[..8];
        string socket = Path.Combine(dir, $"qmp-{id}.sock");
        string pidfile = Path.Combine(dir, $"pid-{id}");
        var psi = strata
            ? new ProcessStartInfo(QemuTools.Resolve("dotnet")) { ArgumentList = { StrataDll, "--log-level", "warning" } }
            : new ProcessStartInfo(QemuTools.Resolve("qemu-storage-daemon"));
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        foreach (var a in new[] { "--chardev", $"socket,path={socket},server=on,wait=off,id=lockmon", "--monitor", "chardev=lockmon", "--pidfile", pidfile })
            psi.ArgumentList.Add(a);
        psi.WorkingDirectory = dir;
        psi.Environment["LC_ALL"] = "C";
        var process = new BackgroundProcess(psi);
        var daemon = new LockDaemon(process, socket);
        var clock = Stopwatch.StartNew();
        while (!File.Exists(pidfile) && !process.HasExited)
        {
            if (clock.Elapsed > TimeSpan.FromSeconds(30))
            {
                await daemon.DisposeAsync();
                throw new TimeoutException($"{psi.FileName} {string.Join(' ', psi.ArgumentList)} was not ready within 30 s");
            }
            await Task.Delay(10);
        }
        if (process.HasExited)
            await process.WaitForExitAsync(); // all of stderr read
        return daemon;
    }

    /// <summary>Sends one QMP command (capabilities negotiated on first use) and returns the reply line, events skipped.</summary>
    public async Task<string> QmpAsync(string command)
    {
        if (_qmp is null)
        {
            _qmp = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            await _qmp.ConnectAsync(new UnixDomainSocketEndPoint(SocketPath));
            _reader = new StreamReader(new NetworkStream(_qmp), Encoding.UTF8);
            await ReadReplyAsync(); // greeting
            await QmpAsync("""{"execute":"qmp_capabilities"}""");
        }
        await _qmp.SendAsync(Encoding.UTF8.GetBytes(command + "\n"));
        return await ReadReplyAsync();
    }

    private async Task<string> ReadReplyAsync()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        while (true)
        {
            string line = await _reader!.ReadLineAsync(cts.Token) ?? throw new IOException("QMP connection closed");
            using var doc = JsonDocument.Parse(line);
            if (!doc.RootElement.TryGetProperty("event", out _))
                return line;
        }
    }

    public async ValueTask DisposeAsync()
    {
        _reader?.Dispose();
        _qmp?.Dispose();
        await _process.DisposeAsync();
    }
}
