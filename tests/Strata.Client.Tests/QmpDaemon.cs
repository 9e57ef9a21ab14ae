using System.Diagnostics;
using System.Text;

namespace Strata.Client.Tests;

/// <summary>
/// A daemon started for one test in its own directory under /var/tmp/strata-tests, with its
/// QMP monitor on <see cref="SocketPath"/>. A missing program makes the test fail (never skip).
/// Disposal kills the daemon if it still runs and removes the directory.
/// </summary>
public sealed class QmpDaemon : IAsyncDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _stderr = new();

    private QmpDaemon(Process process, string directory, string socketPath)
    {
        _process = process;
        Directory = directory;
        SocketPath = socketPath;
    }

    /// <summary>The test's scratch directory.</summary>
    public string Directory { get; }

    public string SocketPath { get; }

    public bool HasExited => _process.HasExited;

    public string StandardError
    {
        get
        {
            lock (_stderr)
            {
                return _stderr.ToString();
            }
        }
    }

    public string PathOf(string name) => Path.Combine(Directory, name);

    public static async Task<QmpDaemon> StartAsync(DaemonCommand command)
    {
        var program = Tools.Resolve(command.Program);
        var dir = Path.Combine("/var/tmp/strata-tests", "qmp-" + Guid.NewGuid().ToString("N")[..12]);
        System.IO.Directory.CreateDirectory(dir);
        var socket = Path.Combine(dir, "qmp.sock");

        var psi = new ProcessStartInfo(program)
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = dir,
        };
        foreach (var a in command.Arguments(socket))
        {
            psi.ArgumentList.Add(a);
        }

        psi.Environment["LC_ALL"] = "C";
        var process = new Process { StartInfo = psi };
        var daemon = new QmpDaemon(process, dir, socket);
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                lock (daemon._stderr)
                {
                    daemon._stderr.AppendLine(e.Data);
                }
            }
        };
        process.OutputDataReceived += (_, _) => { };
        process.Start();
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();

        // Wait for the socket to appear (the daemon listens before it serves).
        var deadline = Stopwatch.StartNew();
        while (!File.Exists(socket))
        {
            if (process.HasExited)
            {
                throw new InvalidOperationException($"{command.Program} exited with {process.ExitCode}: {daemon.StandardError}");
            }

            if (deadline.Elapsed > TimeSpan.FromSeconds(30))
            {
                await daemon.DisposeAsync();
                throw new TimeoutException($"{command.Program} did not create {socket} within 30 s");
            }

            await Task.Delay(10);
        }

        return daemon;
    }

    /// <summary>
    /// Connects a client. The socket file appears at bind(), a moment before the daemon
    /// listens: a refused connection is retried for a while.
    /// </summary>
    public async Task<QmpClient> ConnectAsync(QmpClientOptions? options = null)
    {
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                return await QmpClient.ConnectUnixAsync(SocketPath, options);
            }
            catch (System.Net.Sockets.SocketException e) when (
                e.SocketErrorCode == System.Net.Sockets.SocketError.ConnectionRefused && deadline.Elapsed < TimeSpan.FromSeconds(10) && !HasExited)
            {
                await Task.Delay(10);
            }
        }
    }

    /// <summary>Waits for the daemon to exit on its own.</summary>
    public async Task<int> WaitForExitAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        await _process.WaitForExitAsync(cts.Token);
        return _process.ExitCode;
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                await _process.WaitForExitAsync();
            }
        }
        catch (InvalidOperationException)
        {
        }

        _process.Dispose();
        try
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
