using System.Diagnostics;
using System.Text;

namespace Strata.Nbd.Tests.Infrastructure;

public sealed record ToolResult(string CommandLine, int ExitCode, string StdOut, string StdErr)
{
    public ToolResult EnsureSuccess() => ExitCode == 0
        ? this
        : throw new InvalidOperationException($"`{CommandLine}` exited with {ExitCode}\nstdout: {StdOut}\nstderr: {StdErr}");
}

/// <summary>
/// Runs QEMU's and libnbd's tools asynchronously (the server under test runs in this process). A missing tool
/// fails the test: these tests never skip.
/// </summary>
public static class Tools
{
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(120);

    public static string Resolve(string tool)
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':'))
        {
            var path = Path.Combine(dir, tool);
            if (File.Exists(path))
                return path;
        }
        throw new InvalidOperationException($"{tool} not found on PATH: install qemu-utils, qemu-system-common (qemu-storage-daemon) and libnbd-bin");
    }

    public static Task<ToolResult> RunAsync(string tool, params string[] args) => RunAsync(tool, DefaultTimeout, args);

    public static async Task<ToolResult> RunAsync(string tool, TimeSpan timeout, params string[] args)
    {
        var psi = new ProcessStartInfo(Resolve(tool))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        psi.Environment["LC_ALL"] = "C";
        string commandLine = tool + " " + string.Join(' ', args);
        using var process = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {tool}");
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"`{commandLine}` did not finish within {timeout}");
        }
        return new ToolResult(commandLine, process.ExitCode, await stdout, await stderr);
    }

    public static Task<ToolResult> QemuImg(params string[] args) => RunAsync("qemu-img", args);

    public static Task<ToolResult> QemuIo(params string[] args) => RunAsync("qemu-io", args);

    /// <summary>nbd+unix URI of an export.</summary>
    public static string Uri(string socketPath, string export) => $"nbd+unix:///{export}?socket={socketPath}";
}

/// <summary>Images of known layout, built with qemu-img and qemu-io.</summary>
public static class TestImages
{
    public const long Size = 64L << 20;

    /// <summary>
    /// base.qcow2 (64 MiB): 0x11 at [0, 1M), 0x22 at [4M, +64k).
    /// top.qcow2 over it: 0x33 at [512k, +1M), zero clusters at [8M, +1M), 0x44 at [10M, +4k).
    /// Returns the path of top.qcow2.
    /// </summary>
    public static async Task<string> CreateChainAsync(TempDir dir, string name = "top")
    {
        string b = dir.Combine(name + "-base.qcow2");
        string t = dir.Combine(name + ".qcow2");
        (await Tools.QemuImg("create", "-q", "-f", "qcow2", b, "64M")).EnsureSuccess();
        (await Tools.QemuIo("-f", "qcow2", "-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 4M 64k", b)).EnsureSuccess();
        (await Tools.QemuImg("create", "-q", "-f", "qcow2", "-b", b, "-F", "qcow2", t, "64M")).EnsureSuccess();
        (await Tools.QemuIo("-f", "qcow2", "-c", "write -P 0x33 512k 1M", "-c", "write -z 8M 1M", "-c", "write -P 0x44 10M 4k", t)).EnsureSuccess();
        return t;
    }

    public static async Task<string> CreateEmptyAsync(TempDir dir, string name, string size = "64M", string format = "qcow2")
    {
        string p = dir.Combine(name + "." + format);
        (await Tools.QemuImg("create", "-q", "-f", format, p, size)).EnsureSuccess();
        return p;
    }

    public static string Pattern(byte value) => "0x" + value.ToString("x2");

    public static byte[] Filled(int length, byte value)
    {
        var b = new byte[length];
        b.AsSpan().Fill(value);
        return b;
    }

    public static string Describe(byte[] data) => Encoding.ASCII.GetString(data);
}
