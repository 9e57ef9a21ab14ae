using System.Diagnostics;
using System.Text;
using Strata.Testing;

namespace Strata.Interop.Tests.Qcow2;

/// <summary>Runs strata-crash-writer (tests/Strata.CrashWriter) as a victim process for the crash tests.</summary>
internal static class CrashWriterChild
{
    /// <summary>
    /// Starts the child with <paramref name="args"/>, waits for READY, lets it run <paramref name="delayMs"/> and
    /// SIGKILLs it; returns its complete stdout lines (READY left out), or why the run is not usable.
    /// </summary>
    public static async Task<(List<string> Lines, string? Problem)> RunAndKillAsync(IEnumerable<string> args, int delayMs)
    {
        var (exe, prefix) = ChildCommand();
        var psi = new ProcessStartInfo(exe)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var a in prefix.Concat(args))
            psi.ArgumentList.Add(a);
        using var p = new Process { StartInfo = psi };
        p.Start();
        p.StandardInput.Close();
        var text = new StringBuilder();
        var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var reader = Task.Run(async () =>
        {
            var buf = new char[65536];
            int n;
            while ((n = await p.StandardOutput.ReadAsync(buf)) > 0)
            {
                lock (text)
                {
                    text.Append(buf, 0, n);
                    if (!ready.Task.IsCompleted && text.ToString().Contains("READY\n", StringComparison.Ordinal))
                        ready.TrySetResult();
                }
            }
        });
        var stderr = p.StandardError.ReadToEndAsync();

        var first = await Task.WhenAny(ready.Task, reader, Task.Delay(TimeSpan.FromSeconds(60)));
        string? problem = null;
        if (first == ready.Task)
        {
            await Task.Delay(delayMs);
            if (p.HasExited)
                problem = $"the child exited by itself with code {p.ExitCode} before it was killed";
        }
        else
            problem = first == reader ? "the child exited before READY" : "no READY from the child within 60 s";
        try
        {
            p.Kill(); // SIGKILL
        }
        catch (InvalidOperationException)
        {
        }
        await p.WaitForExitAsync();
        await reader;
        string err = await stderr;
        if (problem != null)
            return ([], $"{problem}; stderr: {err}");

        string all = text.ToString();
        int lastNl = all.LastIndexOf('\n');
        var lines = lastNl < 0 ? [] : all[..lastNl].Split('\n').Where(l => l.Length > 0 && l != "READY").ToList();
        return (lines, null);
    }

    /// <summary>The built strata-crash-writer next to the tests (the apphost, else dotnet strata-crash-writer.dll).</summary>
    private static (string FileName, string[] Prefix) ChildCommand()
    {
        string dir = AppContext.BaseDirectory;
        string apphost = Path.Combine(dir, "strata-crash-writer");
        if (File.Exists(apphost) && !OperatingSystem.IsWindows() && (File.GetUnixFileMode(apphost) & UnixFileMode.UserExecute) != 0)
            return (apphost, []);
        string dll = Path.Combine(dir, "strata-crash-writer.dll");
        if (!File.Exists(dll))
            throw new MissingToolException($"strata-crash-writer not found in {dir}: the test project must reference tests/Strata.CrashWriter and be built");
        string host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } h && File.Exists(h) ? h : QemuTools.Resolve("dotnet");
        return (host, [dll]);
    }
}
