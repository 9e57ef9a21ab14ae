
namespace Strata.Img.Tests;

/// <summary>Runs qemu-img and strata-img with the same arguments and compares what they print and return.</summary>
public static class Differential
{
    /// <summary>qemu-img's output with its program name replaced by strata-img's.</summary>
    public static string Normalize(string qemuStderr) =>
        string.Join('\n', qemuStderr.Split('\n').Select(l =>
            l.StartsWith("qemu-img: ", StringComparison.Ordinal) ? "strata-img: " + l["qemu-img: ".Length..] :
            l == "Try 'qemu-img --help' for more information" ? "Try 'strata-img --help' for more information" : l));

    public static (ProcessResult Qemu, ProcessResult Strata) Run(string dir, params string[] args) =>
        Run(dir, dir, args);

    public static (ProcessResult Qemu, ProcessResult Strata) Run(string qemuDir, string strataDir, params string[] args)
    {
        var q = QemuTools.RunIn(qemuDir, "qemu-img", args);
        var s = QemuTools.StrataImgIn(strataDir, args);
        return (q, s);
    }

    /// <summary>Asserts identical stdout, stderr (program name aside) and exit code.</summary>
    public static void AssertSame(ProcessResult q, ProcessResult s)
    {
        string ctx = $"\nqemu-img:\n{q}\nstrata-img:\n{s}";
        Assert.True(q.StdOut == s.StdOut, "stdout differs" + ctx);
        Assert.True(Normalize(q.StdErr) == s.StdErr, "stderr differs" + ctx);
        Assert.True(q.ExitCode == s.ExitCode, "exit code differs" + ctx);
    }

    public static void AssertSame(string dir, params string[] args)
    {
        var (q, s) = Run(dir, args);
        AssertSame(q, s);
    }
}
