using System.Collections.Concurrent;
using System.Diagnostics;

namespace Strata.Testing;

/// <summary>
/// Runs the QEMU oracle tools (qemu-img, qemu-io, qemu-storage-daemon, nbdinfo, ...)
/// and the built strata-img for differential tests.
/// A missing tool throws <see cref="MissingToolException"/>: such tests fail, never skip.
/// </summary>
public static class QemuTools
{
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(120);

    /// <summary>Debian package that provides each tool (test.sh installs them).</summary>
    private static readonly Dictionary<string, string> Packages = new(StringComparer.Ordinal)
    {
        ["qemu-img"] = "qemu-utils",
        ["qemu-io"] = "qemu-utils",
        ["qemu-nbd"] = "qemu-utils",
        ["qemu-storage-daemon"] = "qemu-system-common",
        ["nbdinfo"] = "libnbd-bin",
        ["nbdcopy"] = "libnbd-bin",
        ["nbdsh"] = "libnbd-bin",
        ["nbdkit"] = "nbdkit",
        ["fio"] = "fio",
    };

    private static readonly ConcurrentDictionary<string, string?> PathCache = new(StringComparer.Ordinal);

    /// <summary>Throws unless qemu-img and qemu-io (or the given tools) are on PATH.</summary>
    public static void RequireTools() => RequireTools("qemu-img", "qemu-io");

    /// <summary>Throws <see cref="MissingToolException"/> naming the first missing tool and its package.</summary>
    public static void RequireTools(params string[] tools)
    {
        foreach (var tool in tools)
        {
            _ = Resolve(tool);
        }
    }

    /// <summary>Full path of a tool (a name looked up on PATH, or a path), or throws.</summary>
    public static string Resolve(string tool)
    {
        if (tool.Contains('/', StringComparison.Ordinal))
        {
            return File.Exists(tool)
                ? tool
                : throw new MissingToolException($"{tool} not found");
        }

        var found = PathCache.GetOrAdd(tool, FindOnPath);
        if (found is not null)
        {
            return found;
        }

        var package = Packages.TryGetValue(tool, out var p) ? p : "the package that provides it";
        throw new MissingToolException($"{tool} not found: install {package} (test.sh does this)");
    }

    /// <summary>Runs a tool with the default timeout (120 s). Never throws for a non-zero exit.</summary>
    public static ProcessResult Run(string tool, params string[] args) => Run(tool, DefaultTimeout, args);

    /// <summary>
    /// Runs a tool, capturing stdout, stderr and the exit code. stdin is empty, LC_ALL=C.
    /// Past <paramref name="timeout"/> the process tree is killed and <see cref="ToolTimeoutException"/> thrown.
    /// </summary>
    public static ProcessResult Run(string tool, TimeSpan timeout, params string[] args) =>
        RunProcess(Resolve(tool), args, timeout);

    public static ProcessResult QemuImg(params string[] args) => Run("qemu-img", args);

    public static ProcessResult QemuIo(params string[] args) => Run("qemu-io", args);

    public static ProcessResult QemuNbd(params string[] args) => Run("qemu-nbd", args);

    public static ProcessResult NbdInfo(params string[] args) => Run("nbdinfo", args);

    /// <summary>
    /// Runs the strata-img built with this test project (it is copied next to the test
    /// assembly through the project reference): the apphost if present, else dotnet strata-img.dll.
    /// </summary>
    public static ProcessResult StrataImg(params string[] args) => StrataImg(DefaultTimeout, args);

    public static ProcessResult StrataImg(TimeSpan timeout, params string[] args)
    {
        var (fileName, prefix) = StrataImgCommand();
        return RunProcess(fileName, [.. prefix, .. args], timeout);
    }

    /// <summary>The program and leading arguments that start the built strata-img.</summary>
    public static (string FileName, string[] Prefix) StrataImgCommand()
    {
        var dir = AppContext.BaseDirectory;
        var apphost = Path.Combine(dir, "strata-img");
        if (File.Exists(apphost) && IsExecutable(apphost))
        {
            return (apphost, []);
        }

        var dll = Path.Combine(dir, "strata-img.dll");
        if (!File.Exists(dll))
        {
            throw new MissingToolException(
                $"strata-img not found in {dir}: the test project must reference src/Strata.Img and be built");
        }

        return (DotnetHost(), [dll]);
    }

    private static string DotnetHost()
    {
        // dotnet test exports the host it runs under; the test host itself usually is dotnet.
        var host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
        if (!string.IsNullOrEmpty(host) && File.Exists(host))
        {
            return host;
        }

        var self = Environment.ProcessPath;
        if (self is not null && Path.GetFileNameWithoutExtension(self) == "dotnet")
        {
            return self;
        }

        return Resolve("dotnet");
    }

    /// <summary>Runs a tool in <paramref name="workingDirectory"/> (relative image names resolve there).</summary>
    public static ProcessResult RunIn(string workingDirectory, string tool, params string[] args) =>
        RunProcess(Resolve(tool), args, DefaultTimeout, workingDirectory);

    /// <summary>Runs the built strata-img in <paramref name="workingDirectory"/>.</summary>
    public static ProcessResult StrataImgIn(string workingDirectory, params string[] args)
    {
        var (fileName, prefix) = StrataImgCommand();
        return RunProcess(fileName, [.. prefix, .. args], DefaultTimeout, workingDirectory);
    }

    private static ProcessResult RunProcess(string fileName, IReadOnlyList<string> args, TimeSpan timeout, string? workingDirectory = null)
    {
        var psi = new ProcessStartInfo(fileName)
        {
            WorkingDirectory = workingDirectory ?? "",
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        psi.Environment["LC_ALL"] = "C";

        var sw = Stopwatch.StartNew();
        using var process = new Process { StartInfo = psi };
        process.Start();
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();

        // The output pipes can also be held open by a child the tool leaves behind (a
        // daemonized server), so bound the reads by the same deadline as the exit.
        var exited = process.WaitForExit(timeout);
        var remaining = timeout - sw.Elapsed;
        var drained = exited && Task.WaitAll([stdout, stderr], remaining > TimeSpan.Zero ? remaining : TimeSpan.Zero);
        if (!exited || !drained)
        {
            try
            {
                process.Kill(entireProcessTree: true);
            }
            catch (InvalidOperationException)
            {
                // already gone
            }

            process.WaitForExit(5000);
            var partialOut = stdout.Wait(2000) ? stdout.Result : "";
            var partialErr = stderr.Wait(2000) ? stderr.Result : "";
            var what = exited ? "left its output open" : "did not exit";
            throw new ToolTimeoutException(
                $"{Path.GetFileName(fileName)} {what} within {timeout.TotalSeconds:0.#} s and was killed:{Environment.NewLine}" +
                new ProcessResult(fileName, [.. args], exited ? process.ExitCode : -1, partialOut, partialErr, sw.Elapsed));
        }

        process.WaitForExit(); // flush async state; the process has exited
        return new ProcessResult(fileName, [.. args], process.ExitCode, stdout.Result, stderr.Result, sw.Elapsed);
    }

    private static string? FindOnPath(string name)
    {
        var path = Environment.GetEnvironmentVariable("PATH") ?? "";
        // Debian keeps some admin tools in sbin, which a non-root PATH may omit.
        foreach (var dir in path.Split(':', StringSplitOptions.RemoveEmptyEntries).Concat(["/usr/sbin", "/sbin"]))
        {
            var candidate = Path.Combine(dir, name);
            if (File.Exists(candidate) && IsExecutable(candidate))
            {
                return candidate;
            }
        }

        return null;
    }

    private static bool IsExecutable(string path) =>
        OperatingSystem.IsWindows() ||
        (File.GetUnixFileMode(path) & (UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute)) != 0;
}
