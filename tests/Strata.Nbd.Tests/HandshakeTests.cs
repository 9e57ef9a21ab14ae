using System.Buffers.Binary;
using Strata.Nbd.Tests.Infrastructure;
using Xunit;
using static Strata.Nbd.Tests.Infrastructure.RawNbdClient;

namespace Strata.Nbd.Tests;

/// <summary>Handshake and option haggling, byte for byte as qemu-storage-daemon 7.2 answers (observed with a raw client).</summary>
public sealed class HandshakeTests : IAsyncLifetime
{
    private TestServer _server = null!;

    public async Task InitializeAsync()
    {
        _server = await TestServer.StartAsync();
        string img = await TestImages.CreateEmptyAsync(_server.Dir, "rw");
        await _server.ExportFileAsync("d", img, new NbdExportOptions { Writable = true, AllocationDepth = true, Description = "hello" });
        string ro = await TestImages.CreateEmptyAsync(_server.Dir, "ro");
        await _server.ExportFileAsync("ro", ro);
    }

    public async Task DisposeAsync() => await _server.DisposeAsync();

    private static byte[] BlockSizeInfo(uint min) => Cat(U16(3), U32(min), U32(4096), U32(32 << 20));

    private static byte[] ExportInfo(ushort flags) => Cat(U16(0), [0, 0, 0, 0, 4, 0, 0, 0], U16(flags));

    [Fact]
    public async Task Greeting_IsFixedNewstyleWithNoZeroes()
    {
        await using var c = await _server.ConnectAsync(clientFlags: null);
        var g = await c.ReadGreetingAsync();
        Assert.Equal("4E42444D4147494349484156454F50540003", Convert.ToHexString(g));
    }

    [Theory]
    [InlineData(4u)]
    [InlineData(0x80000001u)]
    public async Task UnknownClientFlags_DropTheConnection(uint flags)
    {
        await using var c = await _server.ConnectAsync(flags);
        Assert.True(await c.IsClosedAsync());
    }

    [Theory]
    [InlineData(0u)]
    [InlineData(2u)]
    public async Task WithoutFixedNewstyle_OnlyExportNameIsAccepted(uint flags)
    {
        await using (var c = await _server.ConnectAsync(flags))
        {
            await c.SendOptionAsync(3);
            Assert.True(await c.IsClosedAsync());
        }
        await using (var c = await _server.ConnectAsync(flags))
        {
            await c.SendOptionAsync(1, Str("d"));
            var reply = await c.ReadExactAsync(flags == 2 ? 10 : 134);
            Assert.Equal("00000000040000000D6D", Convert.ToHexString(reply, 0, 10));
        }
    }

    [Fact]
    public async Task BadOptionMagic_DropsTheConnection()
    {
        await using var c = await _server.ConnectAsync();
        var bad = new byte[16];
        BinaryPrimitives.WriteUInt64BigEndian(bad, OptsMagic + 1);
        await c.SendAsync(bad);
        Assert.True(await c.IsClosedAsync());
    }

    [Fact]
    public async Task OptionLongerThan32MiB_DropsTheConnection_32MiBIsRead()
    {
        await using (var c = await _server.ConnectAsync())
        {
            await c.SendOptionAsync(99, [], (32u << 20) + 1);
            Assert.True(await c.IsClosedAsync());
        }
        await using (var c = await _server.ConnectAsync())
        {
            await c.SendOptionAsync(99, [], 32u << 20);
            Assert.True(await c.IsSilentAsync(TimeSpan.FromMilliseconds(300))); // waiting for the payload
        }
    }

    [Theory]
    [InlineData(0u, "Unsupported option 0 (<unknown>)")]
    [InlineData(4u, "Unsupported option 4 (<unknown>)")]
    [InlineData(11u, "Unsupported option 11 (<unknown>)")]
    [InlineData(99u, "Unsupported option 99 (<unknown>)")]
    public async Task UnknownOptions_AreUnsupported_WithQemusText(uint option, string text)
    {
        await using var c = await _server.ConnectAsync();
        var r = Assert.Single(await c.OptionAsync(option, Str("abc")));
        Assert.Equal((option, 0x80000001u, text), (r.Option, r.Type, r.Text));
        // The connection survives.
        Assert.Equal(1u, (await c.OptionAsync(3))[^1].Type);
    }

    [Fact]
    public async Task StartTls_WithoutCredentials_IsRefusedByPolicy()
    {
        await using var c = await _server.ConnectAsync();
        var r = Assert.Single(await c.OptionAsync(5));
        Assert.Equal((0x80000002u, "TLS not configured"), (r.Type, r.Text));
        r = Assert.Single(await c.OptionAsync(5, Str("x")));
        Assert.Equal((0x80000003u, "option 'starttls' has unexpected length"), (r.Type, r.Text));
    }

    [Fact]
    public async Task List_SendsEveryExportWithDescription_ThenAck()
    {
        await using var c = await _server.ConnectAsync();
        var replies = await c.OptionAsync(3);
        Assert.Equal(3, replies.Count);
        Assert.Equal((3u, 2u, "00000001" + Convert.ToHexString(Str("dhello"))), (replies[0].Option, replies[0].Type, Convert.ToHexString(replies[0].Data)));
        Assert.Equal("00000002" + Convert.ToHexString(Str("ro")), Convert.ToHexString(replies[1].Data));
        Assert.Equal((1u, 0), (replies[2].Type, replies[2].Data.Length));

        var r = Assert.Single(await c.OptionAsync(3, Str("x")));
        Assert.Equal((0x80000003u, "option 'list' has unexpected length"), (r.Type, r.Text));
    }

    [Fact]
    public async Task StructuredReply_AckedOnce()
    {
        await using var c = await _server.ConnectAsync();
        var r = Assert.Single(await c.OptionAsync(8, Str("x")));
        Assert.Equal((0x80000003u, "option 'structured reply' has unexpected length"), (r.Type, r.Text));
        r = Assert.Single(await c.OptionAsync(8));
        Assert.Equal((8u, 1u), (r.Option, r.Type));
        r = Assert.Single(await c.OptionAsync(8));
        Assert.Equal((0x80000003u, "structured reply already negotiated"), (r.Type, r.Text));
    }

    [Theory]
    [InlineData("d", false, (ushort)0x0d6d)]
    [InlineData("d", true, (ushort)0x0ded)]
    [InlineData("ro", false, (ushort)0x050f)]
    [InlineData("ro", true, (ushort)0x058f)]
    public async Task Go_WithoutRequests_SendsDescriptionBlockSizeExport_AsQsd(string export, bool structured, ushort flags)
    {
        await using var c = await _server.ConnectAsync();
        if (structured)
            await c.OptionAsync(8);
        var replies = await c.GoAsync(export);
        var expected = new List<string>();
        if (export == "d")
            expected.Add(Convert.ToHexString(Cat(U16(2), Str("hello"))));
        expected.Add(Convert.ToHexString(BlockSizeInfo(1)));
        expected.Add(Convert.ToHexString(ExportInfo(flags)));
        Assert.Equal(expected, replies.Where(r => r.Type == 3).Select(r => Convert.ToHexString(r.Data)));
        Assert.All(replies, r => Assert.Equal(7u, r.Option));
        Assert.Equal(1u, replies[^1].Type);
        Assert.Equal(expected.Count + 1, replies.Count);

        // Transmission works right away.
        await c.SendRequestAsync(3, 0, 1, 0, 0);
        var flush = await c.ReadReplyAsync();
        Assert.True(flush.Simple);
        Assert.Equal(0u, flush.Error);
    }

    [Fact]
    public async Task Info_WithNameAndBlockSize_ThenGo()
    {
        await using var c = await _server.ConnectAsync();
        await c.OptionAsync(8);
        var info = await c.InfoAsync("d", 3, 1, 2);
        Assert.Equal(
            [Cat(U16(1), Str("d")), Cat(U16(2), Str("hello")), BlockSizeInfo(1), ExportInfo(0x0ded), []],
            info.Select(r => r.Data));
        Assert.All(info, r => Assert.Equal(6u, r.Option));
        Assert.Equal(1u, info[^1].Type);

        var go = await c.GoAsync("d", 1);
        Assert.Equal(5, go.Count);
        Assert.Equal(Cat(U16(1), Str("d")), go[0].Data);
    }

    [Fact]
    public async Task InfoAndGo_UnknownExport_AreErrUnknown()
    {
        await using var c = await _server.ConnectAsync();
        var r = Assert.Single(await c.InfoAsync("nope"));
        Assert.Equal((0x80000006u, "export 'nope' not present"), (r.Type, r.Text));
        r = Assert.Single(await c.GoAsync("nope"));
        Assert.Equal((7u, 0x80000006u, "export 'nope' not present"), (r.Option, r.Type, r.Text));
        string longName = new('x', 100);
        r = Assert.Single(await c.GoAsync(longName));
        Assert.Equal($"export '{new string('x', 80)}...' not present", r.Text);
        r = Assert.Single(await c.GoAsync(""));
        Assert.Equal("export '' not present", r.Text);
    }

    [Fact]
    public async Task Go_MalformedPayloads_AreInvalid_AndTheConnectionSurvives()
    {
        await using var c = await _server.ConnectAsync();
        var r = Assert.Single(await c.OptionAsync(7, Cat(U32(100), Str("d"))));
        Assert.Equal((0x80000003u, "Inconsistent lengths in option go"), (r.Type, r.Text));
        r = Assert.Single(await c.OptionAsync(7, Cat(U32(1), Str("d"), U16(0), Str("xx"))));
        Assert.Equal("option 'go' has unexpected length", r.Text);
        r = Assert.Single(await c.OptionAsync(7, Cat(U32(5000), new byte[5000], U16(0))));
        Assert.Equal("Invalid name length: 5000", r.Text);
        r = Assert.Single(await c.OptionAsync(7, Cat(U32(3), [(byte)'d', 0, (byte)'x'], U16(0))));
        Assert.Equal("Unexpected embedded NUL in option go", r.Text);
        r = Assert.Single(await c.OptionAsync(7, Cat(U32(1), Str("d"), U16(2), U16(1))));
        Assert.Equal("Inconsistent lengths in option go", r.Text);
        Assert.Equal(0x0ded & ~0x80, await c.NegotiateAsync("d", structured: false));
    }

    [Fact]
    public async Task ExportName_SendsSizeAndFlags_WithOrWithoutPadding()
    {
        await using (var c = await _server.ConnectAsync(3))
        {
            await c.OptionAsync(8);
            await c.SendOptionAsync(1, Str("d"));
            Assert.Equal("00000000040000000DED", Convert.ToHexString(await c.ReadExactAsync(10)));
            await c.SendRequestAsync(3, 0, 1, 0, 0);
            Assert.Equal(0u, (await c.ReadReplyAsync()).Error);
        }
        await using (var c = await _server.ConnectAsync(1))
        {
            await c.SendOptionAsync(1, Str("ro"));
            var reply = await c.ReadExactAsync(134);
            Assert.Equal("0000000004000000050F", Convert.ToHexString(reply, 0, 10));
            Assert.All(reply.Skip(10), b => Assert.Equal(0, b));
        }
    }

    [Fact]
    public async Task ExportName_UnknownOrTooLong_DropsTheConnection()
    {
        await using (var c = await _server.ConnectAsync())
        {
            await c.SendOptionAsync(1, Str("zz"));
            Assert.True(await c.IsClosedAsync());
        }
        await using (var c = await _server.ConnectAsync())
        {
            await c.SendOptionAsync(1, new byte[5000]);
            Assert.True(await c.IsClosedAsync());
        }
    }

    [Fact]
    public async Task Abort_IsAckedThenClosed()
    {
        await using var c = await _server.ConnectAsync();
        var r = Assert.Single(await c.OptionAsync(2));
        Assert.Equal((2u, 1u), (r.Option, r.Type));
        Assert.True(await c.IsClosedAsync());
    }

    [Fact]
    public async Task BlockSizeRequired_ForInfoOnAlignedExports()
    {
        // A storage with O_DIRECT alignment reports it as the minimum, and INFO without a BLOCK_SIZE request fails.
        await using var server = await TestServer.StartAsync();
        string img = await TestImages.CreateEmptyAsync(server.Dir, "direct");
        var image = await Strata.Images.Format.ImageOpener.OpenAsync(img, new Strata.Images.Format.ImageOpenOptions { Direct = true });
        server.Export("x", image);
        int alignment = image.Storage.RequestAlignment;
        Assert.True(alignment > 1);
        await using var c = await server.ConnectAsync();
        var info = await c.InfoAsync("x");
        Assert.Equal(Convert.ToHexString(BlockSizeInfo((uint)alignment)), Convert.ToHexString(info[0].Data));
        Assert.Equal((0x80000008u, "request NBD_INFO_BLOCK_SIZE to use this export"), (info[^1].Type, info[^1].Text));
        info = await c.InfoAsync("x", 3);
        Assert.Equal(1u, info[^1].Type);
        var go = await c.GoAsync("x");
        Assert.Equal(Convert.ToHexString(BlockSizeInfo(1)), Convert.ToHexString(go[0].Data));
    }
}
