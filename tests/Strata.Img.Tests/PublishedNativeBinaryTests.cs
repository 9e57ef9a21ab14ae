namespace Strata.Img.Tests;

/// <summary>
/// The published NativeAOT strata-img users run: the compile reports no trimming or AOT analysis warnings, the
/// binary is position-dependent (README, "Start-up and memory"), and its commands (compressed convert, info, map,
/// check, compare) give qemu-img's output on the same images.
/// </summary>
public sealed class PublishedNativeBinaryTests
{
    [Fact]
    public void PublishedNativeBinary_WithoutAnalysisWarnings_MatchesQemuImg()
    {
        using var dir = new TempDir("aot-img");
        string bin = dir.Combine("bin");
        string log = NativeAotPublish.Run("src/Strata.Img", bin);
        Assert.Empty(NativeAotPublish.AnalysisWarnings(log));
        string exe = Path.Combine(bin, "strata-img");
        Assert.True(NativeAotPublish.IsPositionDependent(exe), "strata-img is linked position-independent");

        string source = dir.Combine("src.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", source, "16M").EnsureSuccess();
        QemuTools.QemuIo("-c", "write -P 0x33 0 1M", "-c", "write -z 4M 64k", "-c", "write -P 0x44 9M 192k", source).EnsureSuccess();

        // Each tool converts the same image with zstd compression; every command then reads both results.
        QemuTools.Run(exe, "convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", source, dir.Combine("s.qcow2")).EnsureSuccess();
        QemuTools.QemuImg("convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", source, dir.Combine("q.qcow2")).EnsureSuccess();
        foreach (string image in new[] { "s.qcow2", "q.qcow2" })
        {
            foreach (string[] command in new[]
            {
                new[] { "info", "--output=json", image },
                ["map", "--output=json", image],
                ["check", "--output=json", image],
                ["compare", "src.qcow2", image],
            })
            {
                var expected = QemuTools.RunIn(dir.Path, "qemu-img", command);
                var actual = QemuTools.RunIn(dir.Path, exe, command);
                Assert.True(expected.ExitCode == actual.ExitCode && expected.StdOut == actual.StdOut,
                    $"{string.Join(' ', command)}\nqemu-img ({expected.ExitCode}):\n{expected.StdOut}{expected.StdErr}\nstrata-img ({actual.ExitCode}):\n{actual.StdOut}{actual.StdErr}");
            }
        }
    }
}
