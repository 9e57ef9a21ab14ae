using System.Diagnostics;
using Strata.Client;
using Xunit;

namespace Strata.Qmp.Server.Tests;

/// <summary>
/// strata-daemon or qemu-storage-daemon started on a qcow2 image with qsd's command line: the image as node
/// <c>src</c>, the NBD server on a unix socket and a writable export <c>w</c>, QMP on another socket. Unlike
/// QmpDaemon, the files live in the test's directory, so the daemon can be stopped (quit, SIGTERM) and started again
/// on the same image.
/// </summary>
public sealed class DiskDaemon : IAsyncDisposable
{
    private readonly BackgroundProcess _process;

    private DiskDaemon(BackgroundProcess process, QmpClient qmp)
    {
        _process = process;
        Qmp = qmp;
    }

    public QmpClient Qmp { get; }

    public string StandardError => _process.StandardError;

    /// <summary>Starts <paramref name="kind"/> ("strata" or "qsd") on <paramref name="image"/>, sockets in <paramref name="dir"/>.</summary>
    public static async Task<DiskDaemon> StartAsync(string kind, string dir, string image)
    {
        string qmpSocket = Path.Combine(dir, "qmp.sock"), nbdSocket = Path.Combine(dir, "nbd.sock");
        // A socket left by the previous run would make the wait below return at once.
        File.Delete(qmpSocket);
        File.Delete(nbdSocket);
        string[] qsdArgs =
        [
            "--blockdev", $"driver=qcow2,node-name=src,file.driver=file,file.filename={image}",
            "--nbd-server", $"addr.type=unix,addr.path={nbdSocket}",
            "--export", "type=nbd,id=w,node-name=src,name=w,writable=on",
            "--chardev", $"socket,path={qmpSocket},server=on,wait=off,id=qmp0", "--monitor", "chardev=qmp0",
        ];
        var psi = kind switch
        {
            "strata" => new ProcessStartInfo("dotnet") { ArgumentList = { Daemons.StrataDll, "--log-level", "warning" } },
            "qsd" => new ProcessStartInfo(QemuTools.Resolve("qemu-storage-daemon")),
            _ => throw new ArgumentException($"unknown daemon {kind}", nameof(kind)),
        };
        foreach (var a in qsdArgs)
            psi.ArgumentList.Add(a);
        psi.WorkingDirectory = dir;
        psi.Environment["LC_ALL"] = "C";
        var process = new BackgroundProcess(psi, kind);

        var clock = Stopwatch.StartNew();
        while (true)
        {
            if (process.HasExited)
                throw new InvalidOperationException($"{kind} exited with {process.ExitCode}: {process.StandardError}");
            if (File.Exists(qmpSocket) && File.Exists(nbdSocket))
            {
                try
                {
                    return new DiskDaemon(process, await QmpClient.ConnectUnixAsync(qmpSocket));
                }
                catch (System.Net.Sockets.SocketException) when (clock.Elapsed < TimeSpan.FromSeconds(20))
                {
                    // bound but not yet listening
                }
            }
            if (clock.Elapsed > TimeSpan.FromSeconds(20))
            {
                await process.DisposeAsync();
                throw new TimeoutException($"{kind} did not open its sockets within 20 s: {process.StandardError}");
            }
            await Task.Delay(10);
        }
    }

    /// <summary>quit over QMP; the daemon must exit with 0 (having closed its nodes).</summary>
    public async Task QuitAsync()
    {
        await Qmp.QuitAsync();
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await _process.WaitForExitAsync(cts.Token);
        Assert.True(_process.ExitCode == 0, $"{_process.Name} exited with {_process.ExitCode} after quit: {_process.StandardError}");
        await Qmp.DisposeAsync();
    }

    /// <summary>SIGTERM; the daemon must exit with 0 (having closed its nodes).</summary>
    public async Task TerminateAsync()
    {
        await _process.SignalAndWaitAsync("TERM");
        Assert.True(_process.ExitCode == 0, $"{_process.Name} exited with {_process.ExitCode} after SIGTERM: {_process.StandardError}");
        await Qmp.DisposeAsync();
    }

    public async ValueTask DisposeAsync()
    {
        await Qmp.DisposeAsync();
        await _process.DisposeAsync();
    }
}
