using System.Diagnostics;

namespace Strata.Client.Tests;

/// <summary>Finds and runs the oracle tools; a missing tool throws (the test fails, it does not skip).</summary>
public static class Tools
{
    public static string Resolve(string tool)
    {
        if (tool.Contains('/', StringComparison.Ordinal))
        {
            return File.Exists(tool) ? tool : throw new FileNotFoundException($"{tool} not found", tool);
        }

        var path = Environment.GetEnvironmentVariable("PATH") ?? "";
        foreach (var dir in path.Split(':', StringSplitOptions.RemoveEmptyEntries).Concat(["/usr/sbin", "/sbin"]))
        {
            var candidate = Path.Combine(dir, tool);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        throw new FileNotFoundException(
            $"{tool} not found on PATH: install it (qemu-storage-daemon: Debian package qemu-system-common; qemu-img: qemu-utils; test.sh does this)", tool);
    }

    /// <summary>Runs qemu-img and throws unless it succeeds.</summary>
    public static void QemuImg(params string[] args)
    {
        var psi = new ProcessStartInfo(Resolve("qemu-img"))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEnd();
        if (!p.WaitForExit(60_000))
        {
            p.Kill(true);
            throw new TimeoutException("qemu-img " + string.Join(' ', args));
        }

        if (p.ExitCode != 0)
        {
            throw new InvalidOperationException($"qemu-img {string.Join(' ', args)} failed ({p.ExitCode}): {stderr}{stdout.Result}");
        }
    }
}
