using System.Diagnostics;

namespace Strata.Img.Tests;

/// <summary>
/// kill -9 in the middle of rebase, commit -d and amend: qemu-img check finds at worst leaked clusters, and what the
/// guest reads is what it read before (these operations never change the visible content).
/// </summary>
public sealed class ChainCrashTests
{
    public static TheoryData<string[]> Operations() => new(
        ["rebase", "-b", "other.qcow2", "-F", "qcow2", "top.qcow2"],
        ["rebase", "-b", "", "top.qcow2"],
        ["commit", "-d", "top.qcow2"],
        ["amend", "-o", "refcount_bits=1", "top.qcow2"],
        ["amend", "-o", "compat=0.10", "top.qcow2"]
    );

    [Theory]
    [MemberData(nameof(Operations))]
    public void KilledAnywhere_LeavesNoCorruption(string[] args)
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("chaincrash");
        void Img(params string[] a) => QemuTools.RunIn(dir.Path, "qemu-img", a).EnsureSuccess();
        void Io(string f, params string[] cmds) => QemuTools.RunIn(dir.Path, "qemu-io", [.. cmds.SelectMany(c => new[] { "-c", c }), f]).EnsureSuccess();
        // 4 KiB clusters make every step many small metadata updates.
        Img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "base.qcow2", "48M");
        Io("base.qcow2", "write -P 1 0 24M");
        Img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "other.qcow2", "48M");
        Io("other.qcow2", "write -P 1 0 8M", "write -P 2 16M 24M");
        Img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2");
        Io("top.qcow2", "write -P 3 4M 8M", "write -z 20M 8M", "write -P 4 40M 4M");
        Img("convert", "-O", "raw", "top.qcow2", "ref.raw");
        foreach (var f in new[] { "base.qcow2", "other.qcow2", "top.qcow2" })
            File.Copy(dir.Combine(f), dir.Combine(f + ".orig"));

        var (exe, prefix) = QemuTools.StrataImgCommand();
        // strata-img starts in about 0.1 s and these runs take 0.2 to 0.5 s: the kills land at different steps.
        foreach (int delayMs in new[] { 100, 150, 200, 260, 330, 420 })
        {
            foreach (var f in new[] { "base.qcow2", "other.qcow2", "top.qcow2" })
                File.Copy(dir.Combine(f + ".orig"), dir.Combine(f), overwrite: true);
            var psi = new ProcessStartInfo(exe) { WorkingDirectory = dir.Path, RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var a in prefix.Concat(args))
                psi.ArgumentList.Add(a);
            using (var p = Process.Start(psi)!)
            {
                if (!p.WaitForExit(delayMs))
                    p.Kill(entireProcessTree: true);
                p.WaitForExit();
            }
            foreach (var f in new[] { "base.qcow2", "top.qcow2" })
            {
                var check = QemuTools.RunIn(dir.Path, "qemu-img", "check", f);
                Assert.True(check.ExitCode is 0 or 3, $"{f} after kill at {delayMs} ms of {string.Join(' ', args)}:\n{check}");
            }
            var cmp = QemuTools.RunIn(dir.Path, "qemu-img", "compare", "-F", "raw", "top.qcow2", "ref.raw");
            Assert.True(cmp.ExitCode == 0, $"guest content changed after kill at {delayMs} ms of {string.Join(' ', args)}:\n{cmp}");
        }
    }
}
