using System.Text.Json;
using Strata.Nbd.Tests.Infrastructure;
using Xunit;

namespace Strata.Nbd.Tests;

/// <summary>
/// The real clients (nbdinfo, nbdcopy, qemu-img, qemu-io) against the server in this process, and the same
/// questions asked of qemu-storage-daemon 7.2 over an identically built image. Missing tools fail these tests.
/// </summary>
public sealed class InteropTests
{
    private static async Task<(TestServer Server, string Image)> StartChainAsync(NbdExportOptions? options = null, TempDir? dir = null)
    {
        var server = await TestServer.StartAsync(dir: dir);
        string top = await TestImages.CreateChainAsync(server.Dir);
        await server.ExportFileAsync("d", top, options ?? new NbdExportOptions { Writable = true, AllocationDepth = true, Description = "hello" });
        return (server, top);
    }

    [Fact]
    public async Task NbdInfo_Json_ReportsSizeFlagsBlockSizesAndContexts()
    {
        var (server, _) = await StartChainAsync();
        await using var _s = server;
        var r = (await Tools.RunAsync("nbdinfo", "--json", server.Uri("d"))).EnsureSuccess();
        using var doc = JsonDocument.Parse(r.StdOut);
        Assert.Equal("newstyle-fixed", doc.RootElement.GetProperty("protocol").GetString());
        Assert.True(doc.RootElement.GetProperty("structured").GetBoolean());
        var e = doc.RootElement.GetProperty("exports")[0];
        Assert.Equal("d", e.GetProperty("export-name").GetString());
        Assert.Equal("hello", e.GetProperty("description").GetString());
        Assert.Equal(TestImages.Size, e.GetProperty("export-size").GetInt64());
        Assert.Equal(["base:allocation", "qemu:allocation-depth"], e.GetProperty("contexts").EnumerateArray().Select(x => x.GetString()));
        foreach (var (flag, value) in new[]
        {
            ("is_read_only", false), ("is_rotational", false), ("can_cache", true), ("can_df", true), ("can_fast_zero", true),
            ("can_flush", true), ("can_fua", true), ("can_multi_conn", true), ("can_trim", true), ("can_zero", true),
        })
        {
            Assert.True(e.GetProperty(flag).GetBoolean() == value, flag);
        }
        Assert.Equal((1, 4096, 33554432), (e.GetProperty("block_size_minimum").GetInt32(), e.GetProperty("block_size_preferred").GetInt32(), e.GetProperty("block_size_maximum").GetInt32()));

        var list = (await Tools.RunAsync("nbdinfo", "--list", "--json", $"nbd+unix:///?socket={server.SocketPath}")).EnsureSuccess();
        using var listDoc = JsonDocument.Parse(list.StdOut);
        Assert.Equal("d", listDoc.RootElement.GetProperty("exports")[0].GetProperty("export-name").GetString());
    }

    [Fact]
    public async Task NbdInfo_Maps_AsQsd()
    {
        var (server, _) = await StartChainAsync();
        await using var _s = server;
        var depth = (await Tools.RunAsync("nbdinfo", "--map=qemu:allocation-depth", server.Uri("d"))).EnsureSuccess();
        Assert.Equal(
            """
                     0      524288    2  backing depth 2
                524288     1048576    1  local
               1572864     2621440    0  absent
               4194304       65536    2  backing depth 2
               4259840     4128768    0  absent
               8388608     1048576    1  local
               9437184     1048576    0  absent
              10485760       65536    1  local
              10551296    56557568    0  absent
            """.Replace("\r", "", StringComparison.Ordinal).Split('\n').Select(l => l.Trim()),
            depth.StdOut.TrimEnd().Split('\n').Select(l => l.Trim()));

        // The same chain served by qemu-storage-daemon: identical answers.
        string qsdImage = await TestImages.CreateChainAsync(server.Dir, "q");
        await using var qsd = await Qsd.StartAsync(qsdImage, server.Dir.Combine("q.sock"), ",writable=on,allocation-depth=on,description=hello");
        foreach (var args in new[] { new[] { "--map" }, ["--map=qemu:allocation-depth"], ["--json"], ["--map", "--totals"] })
        {
            var ours = (await Tools.RunAsync("nbdinfo", [.. args, server.Uri("d")])).EnsureSuccess();
            var theirs = (await Tools.RunAsync("nbdinfo", [.. args, qsd.Uri("d")])).EnsureSuccess();
            Assert.Equal(theirs.StdOut.Replace(qsd.SocketPath, "SOCK", StringComparison.Ordinal), ours.StdOut.Replace(server.SocketPath, "SOCK", StringComparison.Ordinal));
        }
        var ourMap = (await Tools.QemuImg("map", "--output=json", "-f", "raw", server.Uri("d"))).EnsureSuccess();
        var theirMap = (await Tools.QemuImg("map", "--output=json", "-f", "raw", qsd.Uri("d"))).EnsureSuccess();
        Assert.Equal(theirMap.StdOut, ourMap.StdOut);
    }

    [Fact]
    public async Task QemuImgAndQemuIo_ReadAndWriteThroughTheServer_ImageStaysClean()
    {
        using var dir = new TempDir();
        var (server, image) = await StartChainAsync(dir: dir);
        string copy = server.Dir.Combine("copy.qcow2");
        await using (server)
        {
            string uri = server.Uri("d");
            var info = (await Tools.QemuImg("info", "--output=json", uri)).EnsureSuccess();
            using (var doc = JsonDocument.Parse(info.StdOut))
                Assert.Equal(TestImages.Size, doc.RootElement.GetProperty("virtual-size").GetInt64());

            var io = (await Tools.QemuIo("-f", "raw", uri,
                "-c", "write -P 0x5a 1M 3M", "-c", "read -P 0x5a 1M 3M",
                "-c", "write -z 20M 2M", "-c", "read -P 0 20M 2M",
                "-c", "write -f -P 0x77 40M 64k", "-c", "read -P 0x77 40M 64k",
                "-c", "discard 30M 1M",
                "-c", "read -P 0x11 0 512k", "-c", "read -P 0x22 4M 64k", "-c", "read -P 0x44 10M 4k", "-c", "read -P 0 8M 1M")).EnsureSuccess();
            Assert.DoesNotContain("Pattern verification failed", io.StdOut + io.StdErr, StringComparison.Ordinal);
            Assert.DoesNotContain("failed", io.StdOut + io.StdErr, StringComparison.OrdinalIgnoreCase);

            (await Tools.QemuImg("convert", "-f", "raw", "-O", "qcow2", uri, copy)).EnsureSuccess();
            var cmp = await Tools.QemuImg("compare", "-f", "raw", "-F", "qcow2", uri, copy);
            Assert.True(cmp.ExitCode == 0, cmp.StdOut + cmp.StdErr);
        }
        // After the server let go of it, the image is consistent and holds what was written.
        var check = await Tools.QemuImg("check", image);
        Assert.True(check.ExitCode == 0, check.StdOut + check.StdErr);
        Assert.Contains("No errors were found on the image.", check.StdOut, StringComparison.Ordinal);
        var same = await Tools.QemuImg("compare", image, copy);
        Assert.True(same.ExitCode == 0, same.StdOut + same.StdErr);
    }

    [Fact]
    public async Task NbdCopy_BothWays()
    {
        using var dir = new TempDir();
        var (server, image) = await StartChainAsync(dir: dir);
        string raw = server.Dir.Combine("out.raw");
        await using (server)
        {
            string uri = server.Uri("d");
            (await Tools.RunAsync("nbdcopy", uri, raw)).EnsureSuccess();
            var cmp = await Tools.QemuImg("compare", "-f", "raw", "-F", "raw", uri, raw);
            Assert.True(cmp.ExitCode == 0, cmp.StdOut + cmp.StdErr);

            // Change the local copy (data and a zeroed range), copy it back with several connections.
            (await Tools.QemuIo("-f", "raw", "-c", "write -P 0x99 50M 5M", "-c", "write -z 0 1M", raw)).EnsureSuccess();
            (await Tools.RunAsync("nbdcopy", "--connections=4", raw, uri)).EnsureSuccess();
            cmp = await Tools.QemuImg("compare", "-f", "raw", "-F", "raw", uri, raw);
            Assert.True(cmp.ExitCode == 0, cmp.StdOut + cmp.StdErr);
        }
        var check = await Tools.QemuImg("check", image);
        Assert.True(check.ExitCode == 0, check.StdOut + check.StdErr);
        var final = await Tools.QemuImg("compare", "-f", "qcow2", "-F", "raw", image, raw);
        Assert.True(final.ExitCode == 0, final.StdOut + final.StdErr);
    }

    [Fact]
    public async Task ReadOnlyExport_AsSeenByTheTools()
    {
        var (server, _) = await StartChainAsync(new NbdExportOptions());
        await using var _s = server;
        var info = (await Tools.RunAsync("nbdinfo", "--json", server.Uri("d"))).EnsureSuccess();
        using var doc = JsonDocument.Parse(info.StdOut);
        var e = doc.RootElement.GetProperty("exports")[0];
        Assert.True(e.GetProperty("is_read_only").GetBoolean());
        Assert.True(e.GetProperty("can_multi_conn").GetBoolean());
        Assert.False(e.GetProperty("can_trim").GetBoolean());
        Assert.Equal(["base:allocation"], e.GetProperty("contexts").EnumerateArray().Select(x => x.GetString()));
        var io = await Tools.QemuIo("-f", "raw", server.Uri("d"), "-c", "write 0 4k");
        Assert.Contains("Permission denied", io.StdOut + io.StdErr, StringComparison.Ordinal);
    }
}
