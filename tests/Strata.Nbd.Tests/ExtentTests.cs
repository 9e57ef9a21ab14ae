using Strata.Nbd.MetaContexts;
using Strata.Nbd.Tests.Infrastructure;
using Xunit;

namespace Strata.Nbd.Tests;

public sealed class ExtentTests
{
    [Fact]
    public void Sink_MergesEqualFlags_StopsWhenFull_AndKeepsLengthsIn32Bits()
    {
        var sink = new NbdExtentSink();
        sink.Reset(2);
        Assert.True(sink.TryAdd(100, 0));
        Assert.True(sink.TryAdd(0, 3));       // empty extents are ignored
        Assert.True(sink.TryAdd(50, 0));      // merged
        Assert.True(sink.TryAdd(10, 3));
        Assert.True(sink.TryAdd(10, 3));
        Assert.False(sink.TryAdd(5, 0));      // a third extent does not fit
        Assert.False(sink.TryAdd(5, 3));      // and nothing is added after a refusal
        Assert.Equal((2, 170L, true), (sink.Count, sink.TotalLength, sink.IsFull));
        Assert.Equal((150u, 0u), sink[0]);
        Assert.Equal((20u, 3u), sink[1]);

        sink.Reset(3);
        Assert.True(sink.TryAdd(uint.MaxValue - 10, 1));
        Assert.True(sink.TryAdd(100, 1));     // would overflow: a new extent
        Assert.Equal(2, sink.Count);
        Assert.Equal((uint.MaxValue - 10, 1u), sink[0]);
    }

    [Fact]
    public async Task ShortBackingFile_ReadsAsZeroesAllocatedInTheBacking_AsQsd()
    {
        await using var server = await TestServer.StartAsync();
        string b = server.Dir.Combine("b.qcow2"), t = server.Dir.Combine("t.qcow2");
        (await Tools.QemuImg("create", "-q", "-f", "qcow2", b, "1M")).EnsureSuccess();
        (await Tools.QemuIo("-f", "qcow2", "-c", "write -P 1 0 64k", b)).EnsureSuccess();
        (await Tools.QemuImg("create", "-q", "-f", "qcow2", "-b", b, "-F", "qcow2", t, "2M")).EnsureSuccess();
        await server.ExportFileAsync("d", t, new NbdExportOptions { AllocationDepth = true });
        await using var c = await server.ConnectAsync();
        await c.NegotiateAsync("d", true, "base:allocation", "qemu:allocation-depth");
        var chunks = await c.RequestAsync(7, 0, 0, 2 << 20);
        Assert.Equal([(65536u, 0u), (2031616u, 3u)], chunks[0].Extents);
        Assert.Equal([(65536u, 2u), (983040u, 0u), (1048576u, 2u)], chunks[1].Extents);
        var read = await c.RequestAsync(0, 0, 0, 2 << 20);
        Assert.Equal(
            ["data cookie 7 flags 0 offset 0 len 65536", "hole cookie 7 flags 0 offset 65536 len 983040", "hole cookie 7 flags 1 offset 1048576 len 1048576"],
            read.Select(r => r.ToString()));
    }
}
