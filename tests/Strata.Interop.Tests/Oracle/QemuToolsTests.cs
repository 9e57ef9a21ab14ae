using System.Text.Json;
using Xunit;

namespace Strata.Interop.Tests.Oracle;

/// <summary>Smoke tests of the oracle itself: the right QEMU, driven the way differential tests drive it.</summary>
public class QemuToolsTests
{
    [Fact]
    public void QemuImgIsVersion72()
    {
        QemuTools.RequireTools();

        var result = QemuTools.QemuImg("--version").EnsureSuccess();

        Assert.Matches(@"^qemu-img version 7\.2(\.\d+)?\b", result.StdOut);
    }

    [Fact]
    public void QemuImgCreatesAndDescribesQcow2()
    {
        QemuTools.RequireTools();
        using var dir = new TempDir();
        var image = dir.Combine("disk.qcow2");
        const long size = 64L << 20;

        QemuTools.QemuImg("create", "-q", "-f", "qcow2", image, size.ToString()).EnsureSuccess();
        var info = QemuTools.QemuImg("info", "--output=json", image).EnsureSuccess();

        using var json = JsonDocument.Parse(info.StdOut);
        Assert.Equal("qcow2", json.RootElement.GetProperty("format").GetString());
        Assert.Equal(size, json.RootElement.GetProperty("virtual-size").GetInt64());
    }

    [Fact]
    public void QemuIoWritesAndReadsBackAPattern()
    {
        QemuTools.RequireTools();
        using var dir = new TempDir();
        var image = dir.Combine("disk.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", image, "4M").EnsureSuccess();

        QemuTools.QemuIo("-f", "qcow2", "-c", "write -P 0xa5 64k 128k", image).EnsureSuccess();
        var read = QemuTools.QemuIo("-f", "qcow2", "-c", "read -P 0xa5 64k 128k", "-c", "read -P 0 0 64k", image).EnsureSuccess();

        Assert.DoesNotContain("Pattern verification failed", read.StdOut + read.StdErr, StringComparison.Ordinal);
        QemuTools.QemuImg("check", "-q", image).EnsureSuccess();
    }

    [Fact]
    public void MissingToolFailsWithInstallHint()
    {
        var e = Assert.Throws<MissingToolException>(() => QemuTools.Run("strata-no-such-tool", "--version"));
        Assert.Contains("strata-no-such-tool not found", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void TimeoutKillsTheProcessAndFails()
    {
        var e = Assert.Throws<ToolTimeoutException>(() => QemuTools.Run("sleep", TimeSpan.FromMilliseconds(300), "30"));
        Assert.Contains("was killed", e.Message, StringComparison.Ordinal);
    }
}
