using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace Strata.Testing;

/// <summary>
/// A long-running child (a daemon under test) started with stdout and stderr redirected and collected as they come,
/// so that neither pipe fills up. Disposal kills it and its children if it still runs.
/// </summary>
public sealed class BackgroundProcess : IDisposable, IAsyncDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _out = new(), _err = new();

    /// <summary>Starts <paramref name="psi"/> (its redirection settings are overridden); <paramref name="name"/> names it in messages.</summary>
    public BackgroundProcess(ProcessStartInfo psi, string? name = null)
    {
        Name = name ?? Path.GetFileName(psi.FileName);
        psi.RedirectStandardOutput = true;
        psi.RedirectStandardError = true;
        psi.UseShellExecute = false;
        _process = new Process { StartInfo = psi };
        _process.OutputDataReceived += (_, e) => Append(_out, e.Data);
        _process.ErrorDataReceived += (_, e) => Append(_err, e.Data);
        _process.Start();
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
    }

    public string Name { get; }
    public int Id => _process.Id;
    public bool HasExited => _process.HasExited;
    public int ExitCode => _process.ExitCode;

    public string StandardOutput
    {
        get
        {
            lock (_out)
                return _out.ToString();
        }
    }

    public string StandardError
    {
        get
        {
            lock (_err)
                return _err.ToString();
        }
    }

    /// <summary>Waits for the exit and for the end of both streams.</summary>
    public Task WaitForExitAsync(CancellationToken cancellationToken = default) => _process.WaitForExitAsync(cancellationToken);

    /// <summary>Sends SIG<paramref name="signal"/> (kill -TERM, -INT, ...) and waits up to 30 s for the exit.</summary>
    public async Task SignalAndWaitAsync(string signal)
    {
        using (var kill = Process.Start("kill", ["-" + signal, _process.Id.ToString(CultureInfo.InvariantCulture)]))
            await kill.WaitForExitAsync();
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        try
        {
            await _process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            throw new TimeoutException($"{Name} did not stop within 30 s of SIG{signal}: {StandardError}");
        }
    }

    public void Dispose()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                _process.WaitForExit();
            }
        }
        catch (InvalidOperationException)
        {
        }
        _process.Dispose();
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
    }

    private static void Append(StringBuilder sb, string? line)
    {
        if (line is null)
            return;
        lock (sb)
            sb.Append(line).Append('\n');
    }
}
