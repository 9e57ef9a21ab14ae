using Strata.Nbd.MetaContexts;
using Strata.Nbd.Tests.Infrastructure;
using Xunit;
using static Strata.Nbd.Tests.Infrastructure.RawNbdClient;

namespace Strata.Nbd.Tests;

/// <summary>LIST_META_CONTEXT / SET_META_CONTEXT with QEMU 7.2's ids and query rules.</summary>
public sealed class MetaContextTests : IAsyncLifetime
{
    private TestServer _server = null!;

    public async Task InitializeAsync()
    {
        _server = await TestServer.StartAsync();
        string img = await TestImages.CreateEmptyAsync(_server.Dir, "rw");
        await _server.ExportFileAsync("d", img, new NbdExportOptions
        {
            Writable = true,
            AllocationDepth = true,
            MetaContexts = [new FixedContext("qemu:dirty-bitmap:b0", 1), new FixedContext("qemu:dirty-bitmap:b1", 0)],
        });
        string plain = await TestImages.CreateEmptyAsync(_server.Dir, "plain");
        await _server.ExportFileAsync("plain", plain);
    }

    public async Task DisposeAsync() => await _server.DisposeAsync();

    /// <summary>A stand-in for a dirty bitmap: the whole range with one flag value.</summary>
    private sealed class FixedContext(string name, uint flags) : INbdMetaContextProvider
    {
        public string Name => name;

        public ValueTask GetExtentsAsync(long offset, long length, NbdExtentSink sink, CancellationToken ct)
        {
            long half = length / 2;
            sink.TryAdd(half, flags);
            sink.TryAdd(length - half, flags); // merged with the first
            return ValueTask.CompletedTask;
        }
    }

    private static List<(uint Id, string Name)> Contexts(List<OptionReply> replies)
    {
        Assert.Equal(1u, replies[^1].Type);
        return replies.Where(r => r.Type == 4).Select(r => (RawNbdClient_ReadId(r.Data), System.Text.Encoding.UTF8.GetString(r.Data, 4, r.Data.Length - 4))).ToList();
    }

    private static uint RawNbdClient_ReadId(byte[] data) => System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(data);

    [Fact]
    public async Task List_WithoutQueries_ListsEverything_WithIdZero_EvenBeforeStructuredReply()
    {
        await using var c = await _server.ConnectAsync();
        Assert.Equal(
            [(0u, "base:allocation"), (0u, "qemu:allocation-depth"), (0u, "qemu:dirty-bitmap:b0"), (0u, "qemu:dirty-bitmap:b1")],
            Contexts(await c.ListMetaAsync("d")));
        Assert.Equal([(0u, "base:allocation")], Contexts(await c.ListMetaAsync("plain")));
    }

    [Theory]
    [InlineData("base:", "base:allocation")]
    [InlineData("qemu:", "qemu:allocation-depth,qemu:dirty-bitmap:b0,qemu:dirty-bitmap:b1")]
    [InlineData("qemu:dirty-bitmap:", "qemu:dirty-bitmap:b0,qemu:dirty-bitmap:b1")]
    [InlineData("qemu:dirty-bitmap:b1", "qemu:dirty-bitmap:b1")]
    [InlineData("qemu:allocation-depth", "qemu:allocation-depth")]
    [InlineData("foo:bar", "")]
    [InlineData("qemu:dirty-", "")]
    [InlineData("", "")]
    public async Task List_QueryRules(string query, string expected)
    {
        await using var c = await _server.ConnectAsync();
        await c.OptionAsync(8);
        Assert.Equal(expected, string.Join(',', Contexts(await c.ListMetaAsync("d", query)).Select(x => x.Name)));
    }

    [Fact]
    public async Task Set_NeedsStructuredReply_AndReturnsQemuIds()
    {
        await using var c = await _server.ConnectAsync();
        var r = Assert.Single(await c.SetMetaAsync("d", "base:allocation"));
        Assert.Equal((0x80000003u, "request option 'set meta context' when structured reply is not negotiated"), (r.Type, r.Text));
        await c.OptionAsync(8);
        Assert.Empty(Contexts(await c.SetMetaAsync("d")));
        Assert.Empty(Contexts(await c.SetMetaAsync("d", "base:", "qemu:", "qemu:dirty-bitmap:")));
        Assert.Equal(
            [(0u, "base:allocation"), (1u, "qemu:allocation-depth"), (3u, "qemu:dirty-bitmap:b1")],
            Contexts(await c.SetMetaAsync("d", "qemu:dirty-bitmap:b1", "qemu:allocation-depth", "base:allocation", "nope:x")));
        Assert.Equal([(0u, "base:allocation")], Contexts(await c.SetMetaAsync("plain", "qemu:allocation-depth", "base:allocation")));
    }

    [Fact]
    public async Task MalformedQueries()
    {
        await using var c = await _server.ConnectAsync();
        await c.OptionAsync(8);
        var r = Assert.Single(await c.ListMetaAsync("zz"));
        Assert.Equal((0x80000006u, "export 'zz' not present"), (r.Type, r.Text));
        // Queries longer than 4096 bytes are skipped.
        var replies = await c.OptionAsync(9, Cat(U32(1), Str("d"), U32(1), U32(5000), new byte[5000]));
        Assert.Empty(Contexts(replies));
        r = Assert.Single(await c.OptionAsync(9, Cat(U32(1), Str("d"), U32(2), U32(4), Str("qemu"))));
        Assert.Equal((0x80000003u, "Inconsistent lengths in option list meta context"), (r.Type, r.Text));
        r = Assert.Single(await c.OptionAsync(9, Cat(U32(1), Str("d"), U32(1), U32(4), [(byte)'q', 0, (byte)'m', (byte)'u'])));
        Assert.Equal("Unexpected embedded NUL in option list meta context", r.Text);
        r = Assert.Single(await c.OptionAsync(10, Cat(U32(9000), Str("d"))));
        Assert.Equal("Invalid name length: 9000", r.Text);
        Assert.Equal((ushort)0x0ded, await c.NegotiateAsync("d", structured: false));
    }

    [Fact]
    public async Task BlockStatus_OneChunkPerSelectedContext_LastOneDone()
    {
        await using var c = await _server.ConnectAsync();
        await c.NegotiateAsync("d", true, "qemu:dirty-bitmap:b0", "base:allocation", "qemu:allocation-depth");
        var chunks = await c.RequestAsync(7, 0, 0, 1 << 20);
        Assert.Equal([0u, 1u, 2u], chunks.Select(x => x.ContextId));
        Assert.Equal([0, 0, 1], chunks.Select(x => (int)x.Flags));
        Assert.Equal([(1u << 20, 3u)], chunks[0].Extents);
        Assert.Equal([(1u << 20, 0u)], chunks[1].Extents);
        Assert.Equal([(1u << 20, 1u)], chunks[2].Extents);
    }

    [Fact]
    public async Task ContextsChosenForAnotherExport_DoNotCarryOver()
    {
        await using var c = await _server.ConnectAsync();
        await c.OptionAsync(8);
        await c.SetMetaAsync("plain", "base:allocation");
        await c.NegotiateAsync("d", structured: false);
        var r = Assert.Single(await c.RequestAsync(7, 0, 0, 4096));
        Assert.Equal((22u, "CMD_BLOCK_STATUS not negotiated"), (r.ChunkError, r.ErrorMessage));
    }
}
