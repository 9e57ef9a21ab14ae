using Strata.Images.Format;
using Strata.Nbd.Tests.Infrastructure;
using Xunit;
using static Strata.Nbd.Tests.Infrastructure.RawNbdClient;

namespace Strata.Nbd.Tests;

/// <summary>Commands, replies and errors as qemu-storage-daemon 7.2 sends them (expected values observed from qsd).</summary>
public sealed class TransmissionTests : IAsyncLifetime
{
    private const ushort Read = 0, Write = 1, Disc = 2, Flush = 3, Trim = 4, Cache = 5, WriteZeroes = 6, BlockStatus = 7;
    private const long Size = TestImages.Size;

    private TestServer _server = null!;
    private WrappedImage _wrapped = null!;

    public async Task InitializeAsync()
    {
        _server = await TestServer.StartAsync();
        string top = await TestImages.CreateChainAsync(_server.Dir);
        await _server.ExportFileAsync("chain", top, new NbdExportOptions { Writable = true, AllocationDepth = true, ProbeStorageHoles = false });
        string holes = await TestImages.CreateChainAsync(_server.Dir, "holes");
        await _server.ExportFileAsync("holes", holes, new NbdExportOptions { AllocationDepth = true, ProbeStorageHoles = true });
        string rw = await TestImages.CreateEmptyAsync(_server.Dir, "rw");
        _wrapped = new WrappedImage(await ImageOpener.OpenAsync(rw, new ImageOpenOptions()));
        _server.Export("w", _wrapped, new NbdExportOptions { Writable = true });
        string ro = await TestImages.CreateEmptyAsync(_server.Dir, "ro");
        await _server.ExportFileAsync("ro", ro);
    }

    public async Task DisposeAsync() => await _server.DisposeAsync();

    private async Task<RawNbdClient> OpenAsync(string export, bool structured = true, params string[] contexts)
    {
        var c = await _server.ConnectAsync();
        await c.NegotiateAsync(export, structured, contexts);
        return c;
    }

    public static TheoryData<ushort, ushort, ulong, uint, string> InvalidRequests() => new()
    {
        { Read, 0, Size - 512, 1024, "operation past EOF; From: 67108352, Len: 1024, Size: 67108864" },
        { Read, 0, Size + 512, 0, "operation past EOF; From: 67109376, Len: 0, Size: 67108864" },
        { Write, 0, Size - 512, 1024, "operation past EOF; From: 67108352, Len: 1024, Size: 67108864" },
        { WriteZeroes, 0, Size - 512, 1024, "operation past EOF; From: 67108352, Len: 1024, Size: 67108864" },
        { Trim, 0, Size - 512, 1024, "operation past EOF; From: 67108352, Len: 1024, Size: 67108864" },
        { Cache, 0, Size - 512, 1024, "operation past EOF; From: 67108352, Len: 1024, Size: 67108864" },
        { BlockStatus, 0, 9 << 20, 64 << 20, "operation past EOF; From: 9437184, Len: 67108864, Size: 67108864" },
        { 100, 0, Size, 512, "operation past EOF; From: 67108864, Len: 512, Size: 67108864" },
        { BlockStatus, 0, 0, 4096, "CMD_BLOCK_STATUS not negotiated" },
        { BlockStatus, 0, 0, 0, "need non-zero length" },
        { Read, 2, 0, 512, "unsupported flags for command read (got 0x2)" },
        { Read, 0x8000, 0, 512, "unsupported flags for command read (got 0x8000)" },
        { Write, 2, 0, 512, "unsupported flags for command write (got 0x2)" },
        { WriteZeroes, 4, 0, 512, "unsupported flags for command write zeroes (got 0x4)" },
        { Flush, 8, 0, 0, "unsupported flags for command flush (got 0x8)" },
        { 9, 0, 0, 512, "invalid request type (9) received" },
        { 8, 0, 0, 512, "invalid request type (8) received" },
        { 9, 2, 0, 512, "unsupported flags for command <unknown> (got 0x2)" },
        { Read, 0, 0, (32u << 20) + 1, "len (33554433 ) is larger than max len (33554432)" },
        { Cache, 0, 0, (32u << 20) + 1, "len (33554433 ) is larger than max len (33554432)" },
    };

    [Theory]
    [MemberData(nameof(InvalidRequests))]
    public async Task InvalidRequests_AreEinvalErrorChunks_WithQemusMessage_AndTheConnectionSurvives(ushort type, ushort flags, ulong offset, uint length, string message)
    {
        await using var c = await OpenAsync("chain");
        byte[]? payload = type == Write ? new byte[length] : null;
        var r = Assert.Single(await c.RequestAsync(type, flags, offset, length, payload));
        Assert.Equal((false, (ushort)0x8001, (ushort)1, 22u, message), (r.Simple, r.Type, r.Flags, r.ChunkError, r.ErrorMessage));
        Assert.Equal(0u, Assert.Single(await c.RequestAsync(Flush, 0, 0, 0, cookie: 8)).Error);
    }

    [Theory]
    [MemberData(nameof(InvalidRequests))]
    public async Task InvalidRequests_WithoutStructuredReplies_AreSimpleEinval(ushort type, ushort flags, ulong offset, uint length, string message)
    {
        _ = message;
        await using var c = await OpenAsync("chain", structured: false);
        byte[]? payload = type == Write ? new byte[length] : null;
        var r = Assert.Single(await c.RequestAsync(type, flags, offset, length, payload));
        Assert.Equal((true, 22u, 0), (r.Simple, r.Error, r.Payload.Length));
    }

    [Fact]
    public async Task DfRead_WithoutStructuredReplies_IsInvalid()
    {
        await using var c = await OpenAsync("chain", structured: false);
        Assert.Equal(22u, Assert.Single(await c.RequestAsync(Read, 4, 0, 512)).Error);
    }

    [Fact]
    public async Task OversizedWrite_IsAnswered_ThenTheConnectionIsDropped()
    {
        await using var c = await OpenAsync("chain");
        await c.SendRequestAsync(Write, 0, 5, 0, (32u << 20) + 1);
        var r = await c.ReadReplyAsync();
        Assert.Equal((5ul, 22u, "len (33554433 ) is larger than max len (33554432)"), (r.Cookie, r.ChunkError, r.ErrorMessage));
        Assert.True(await c.IsClosedAsync());
    }

    [Fact]
    public async Task ReadOnlyExport_RefusesWritesWithEinval_AndServesTheRest()
    {
        await using var c = await OpenAsync("ro", true, "base:allocation", "qemu:allocation-depth");
        foreach (var (type, flags, offset) in new (ushort, ushort, ulong)[] { (Write, 0, 0), (Write, 0, (ulong)Size), (WriteZeroes, 0, 0), (Trim, 0, 0), (WriteZeroes, 4, 0) })
        {
            var r = Assert.Single(await c.RequestAsync(type, flags, offset, 512, type == Write ? new byte[512] : null));
            Assert.Equal((22u, "Export is read-only"), (r.ChunkError, r.ErrorMessage));
        }
        Assert.Equal(0u, Assert.Single(await c.RequestAsync(Flush, 0, 0, 0)).Error);
        Assert.Equal(0u, Assert.Single(await c.RequestAsync(Cache, 0, 0, 4096)).Error);
        var bs = Assert.Single(await c.RequestAsync(BlockStatus, 0, 0, 4096));
        Assert.Equal((0u, (ushort)1), (bs.ContextId, bs.Flags)); // allocation-depth is not offered by this export
        var read = Assert.Single(await c.RequestAsync(Read, 1, 0, 4096));
        Assert.Equal((ushort)2, read.Type); // an all-zero image reads as one hole
    }

    [Fact]
    public async Task SparseRead_FollowsTheChainsBlockStatus_AsQsd()
    {
        await using var c = await OpenAsync("chain");
        var chunks = await c.RequestAsync(Read, 0, 0, 12 << 20);
        Assert.Equal(
            [
                "data cookie 7 flags 0 offset 0 len 524288",
                "data cookie 7 flags 0 offset 524288 len 1048576",
                "hole cookie 7 flags 0 offset 1572864 len 2621440",
                "data cookie 7 flags 0 offset 4194304 len 65536",
                "hole cookie 7 flags 0 offset 4259840 len 4128768",
                "hole cookie 7 flags 0 offset 8388608 len 1048576",
                "hole cookie 7 flags 0 offset 9437184 len 1048576",
                "data cookie 7 flags 0 offset 10485760 len 65536",
                "hole cookie 7 flags 1 offset 10551296 len 2031616",
            ],
            chunks.Select(x => x.ToString()));
        Assert.All(chunks[0].Payload.Skip(8), b => Assert.Equal(0x11, b));
        Assert.All(chunks[1].Payload.Skip(8), b => Assert.Equal(0x33, b));
        Assert.All(chunks[3].Payload.Skip(8), b => Assert.Equal(0x22, b));
        Assert.All(chunks[7].Payload.Skip(8 + 4096), b => Assert.Equal(0, b));

        // Small reads inside one run, and across a zero/unallocated boundary.
        Assert.Equal(["data cookie 7 flags 1 offset 100 len 5000"], (await c.RequestAsync(Read, 0, 100, 5000)).Select(x => x.ToString()));
        Assert.Equal(
            ["hole cookie 7 flags 0 offset 8388508 len 100", "hole cookie 7 flags 1 offset 8388608 len 200"],
            (await c.RequestAsync(Read, 0, (8 << 20) - 100, 300)).Select(x => x.ToString()));
    }

    [Fact]
    public async Task SparseRead_LooksThroughHostHoles_WhenAsked()
    {
        await using var c = await OpenAsync("holes", true, "base:allocation");
        var chunks = await c.RequestAsync(Read, 0, 10 << 20, 64 << 10);
        Assert.Equal(["data cookie 7 flags 0 offset 10485760 len 4096", "hole cookie 7 flags 1 offset 10489856 len 61440"], chunks.Select(x => x.ToString()));
        var bs = Assert.Single(await c.RequestAsync(BlockStatus, 0, 10 << 20, 64 << 10));
        Assert.Equal([(4096u, 0u), (61440u, 2u)], bs.Extents);
    }

    [Fact]
    public async Task DfRead_IsOneDataChunk_AndZeroLengthReadIsNone()
    {
        await using var c = await OpenAsync("chain");
        var r = Assert.Single(await c.RequestAsync(Read, 4, 0, 2 << 20));
        Assert.Equal("data cookie 7 flags 1 offset 0 len 2097152", r.ToString());
        Assert.Equal(0x33, r.Payload[8 + (600 << 10)]);
        r = Assert.Single(await c.RequestAsync(Read, 0, 0, 0));
        Assert.Equal("none cookie 7 flags 1", r.ToString());
        r = Assert.Single(await c.RequestAsync(Read, 0, (ulong)Size, 0));
        Assert.Equal("none cookie 7 flags 1", r.ToString());
    }

    [Fact]
    public async Task SimpleRead_CarriesTheData()
    {
        await using var c = await OpenAsync("chain", structured: false);
        c.SimpleDataLength = cookie => cookie == 7 ? 8192 : 0;
        var r = Assert.Single(await c.RequestAsync(Read, 0, (1 << 20) - 4096, 8192));
        Assert.Equal((0u, 8192), (r.Error, r.Payload.Length));
        Assert.All(r.Payload.Take(4096), b => Assert.Equal(0x33, b));
        Assert.All(r.Payload.Skip(4096), b => Assert.Equal(0x33, b));
        c.SimpleDataLength = _ => 0;
        r = Assert.Single(await c.RequestAsync(Read, 0, 0, 0));
        Assert.Equal((true, 0u), (r.Simple, r.Error));
    }

    [Fact]
    public async Task BlockStatus_BaseAllocationAndAllocationDepth_AsQsd()
    {
        await using var c = await OpenAsync("chain", true, "base:allocation", "qemu:allocation-depth");
        var chunks = await c.RequestAsync(BlockStatus, 0, 0, 64 << 20);
        Assert.Equal(2, chunks.Count);
        Assert.Equal((0u, (ushort)0), (chunks[0].ContextId, chunks[0].Flags));
        Assert.Equal(
            [(1572864u, 0u), (2621440u, 3u), (65536u, 0u), (6225920u, 3u), (65536u, 0u), (56557568u, 3u)],
            chunks[0].Extents);
        Assert.Equal((1u, (ushort)1), (chunks[1].ContextId, chunks[1].Flags));
        Assert.Equal(
            [(524288u, 2u), (1048576u, 1u), (2621440u, 0u), (65536u, 2u), (4128768u, 0u), (1048576u, 1u), (1048576u, 0u), (65536u, 1u), (56557568u, 0u)],
            chunks[1].Extents);

        chunks = await c.RequestAsync(BlockStatus, 8, 0, 64 << 20);
        Assert.Equal([(1572864u, 0u)], chunks[0].Extents);
        Assert.Equal([(524288u, 2u)], chunks[1].Extents);

        chunks = await c.RequestAsync(BlockStatus, 0, 100, 5000);
        Assert.Equal([(5000u, 0u)], chunks[0].Extents);
        Assert.Equal([(5000u, 2u)], chunks[1].Extents);
    }

    [Fact]
    public async Task Cache_CopiesUpLikeQemu()
    {
        await using var c = await OpenAsync("chain", true, "base:allocation", "qemu:allocation-depth");
        Assert.Equal(0u, Assert.Single(await c.RequestAsync(Cache, 0, 0, 12 << 20)).Error);
        var chunks = await c.RequestAsync(BlockStatus, 0, 0, 12 << 20);
        Assert.Equal([(8388608u, 0u), (2097152u, 3u), (65536u, 0u), (2031616u, 3u)], chunks[0].Extents);
        Assert.Equal([(12582912u, 1u)], chunks[1].Extents);
        var data = await c.RequestAsync(Read, 4, 0, 2 << 20);
        Assert.Equal(0x11, data[0].Payload[8]);
        Assert.Equal(0x33, data[0].Payload[8 + (1 << 20)]);
    }

    [Fact]
    public async Task RepliesComeOutOfOrder_WhenAnEarlierRequestIsSlow()
    {
        _wrapped.GateOffset = 1 << 20;
        try
        {
            await using var c = await OpenAsync("w");
            await c.SendRequestAsync(Read, 4, 1, 1 << 20, 4096);
            await _wrapped.GateReached.Task.WaitAsync(TimeSpan.FromSeconds(10));
            await c.SendRequestAsync(Read, 4, 2, 0, 4096);
            await c.SendRequestAsync(Flush, 0, 3, 0, 0);
            var first = await c.ReadReplyAsync();
            var second = await c.ReadReplyAsync();
            Assert.Equal(new ulong[] { 2, 3 }, new[] { first.Cookie, second.Cookie }.Order());
            _wrapped.ReleaseGate();
            var last = await c.ReadReplyAsync();
            Assert.Equal((1ul, (ushort)1, 4096), (last.Cookie, last.Type, last.DataLength));
        }
        finally
        {
            _wrapped.GateOffset = null;
            _wrapped.ReleaseGate();
        }
    }

    [Fact]
    public async Task ManyPipelinedRequests_AllAnswered_DataIntact()
    {
        await using var c = await OpenAsync("w");
        var batch = new List<byte[]>();
        for (int i = 0; i < 300; i++)
            batch.Add(Request(Write, 0, (ulong)i, (ulong)(i * 8192), 8192, TestImages.Filled(8192, (byte)(i + 1))));
        await c.SendAsync(Cat(batch.ToArray()));
        var cookies = new HashSet<ulong>();
        for (int i = 0; i < 300; i++)
        {
            var r = await c.ReadReplyAsync();
            Assert.Equal(0u, r.Error);
            Assert.True(cookies.Add(r.Cookie));
        }
        batch.Clear();
        for (int i = 0; i < 300; i++)
            batch.Add(Request(Read, 4, (ulong)(1000 + i), (ulong)(i * 8192), 8192));
        await c.SendAsync(Cat(batch.ToArray()));
        for (int i = 0; i < 300; i++)
        {
            var r = await c.ReadReplyAsync();
            int n = (int)r.Cookie - 1000;
            Assert.Equal((ulong)(n * 8192), r.ChunkOffset);
            Assert.All(r.Payload.Skip(8), b => Assert.Equal((byte)(n + 1), b));
        }
    }

    [Fact]
    public async Task LargeWrites_SplitAcrossSends_AreReceivedWhole()
    {
        await using var c = await OpenAsync("w");
        foreach (int size in new[] { 1000, 65536, 4 << 20, 32 << 20 })
        {
            byte value = (byte)(size % 251);
            var request = Request(Write, 0, 42, 1 << 20, (uint)size, TestImages.Filled(size, value));
            // Header and a little payload first, the rest later.
            await c.SendAsync(request[..40]);
            await Task.Delay(20);
            await c.SendAsync(request[40..]);
            var w = await c.ReadReplyAsync();
            Assert.Equal((42ul, 0u), (w.Cookie, w.Error));
            var read = Assert.Single(await c.RequestAsync(Read, 4, 1 << 20, (uint)size));
            Assert.Equal(size, read.DataLength);
            Assert.True(read.Payload.AsSpan(8).IndexOfAnyExcept(value) < 0);
        }
    }

    [Fact]
    public async Task FlagsReachTheImage()
    {
        await using var c = await OpenAsync("w");
        int before = _wrapped.Calls.Count;
        Assert.Equal(0u, Assert.Single(await c.RequestAsync(Write, 1, 0, 512, new byte[512])).Error);
        Assert.Equal(0u, Assert.Single(await c.RequestAsync(WriteZeroes, 0, 4096, 4096)).Error);
        Assert.Equal(0u, Assert.Single(await c.RequestAsync(WriteZeroes, 2, 4096, 4096)).Error);
        Assert.Equal(0u, Assert.Single(await c.RequestAsync(WriteZeroes, 0x13, 4096, 4096)).Error);
        Assert.Equal(0u, Assert.Single(await c.RequestAsync(WriteZeroes, 0, 4096, 0)).Error);
        Assert.Equal(0u, Assert.Single(await c.RequestAsync(Trim, 1, 65536, 65536)).Error);
        Assert.Equal(0u, Assert.Single(await c.RequestAsync(Trim, 0, 65536, 0)).Error);
        Assert.Equal(0u, Assert.Single(await c.RequestAsync(Flush, 0, 0, 0)).Error);
        Assert.Single(await c.RequestAsync(Read, 1, 0, 512));
        Assert.Equal(
            ["write 0 512 Fua", "zero 4096 4096 MayUnmap", "zero 4096 4096 None", "zero 4096 4096 NoFallback, Fua", "discard 65536 65536", "flush", "flush", "flush"],
            _wrapped.Calls.Skip(before));
    }

    public static TheoryData<Exception, uint> Failures() => new()
    {
        { new IOException("disk full", 28), 28u },
        { new IOException("quota", 122), 28u },
        { new IOException("read-only fs", 30), 1u },
        { new IOException("odd errno", 9), 22u },
        { new IOException("plain"), 5u },
        { new NotSupportedException("no fast zero"), 95u },
        { new UnauthorizedAccessException("no"), 1u },
        { new Strata.Images.ImageException("'x' is opened read-only"), 1u },
        { new InvalidOperationException("boom"), 5u },
    };

    [Theory]
    [MemberData(nameof(Failures))]
    public async Task ImageFailures_MapToNbdErrors(Exception failure, uint errno)
    {
        await using var c = await OpenAsync("w");
        _wrapped.Fail = failure;
        try
        {
            var r = Assert.Single(await c.RequestAsync(Write, 0, 0, 512, new byte[512]));
            Assert.Equal((errno, "writing to file failed"), (r.ChunkError, r.ErrorMessage));
            r = Assert.Single(await c.RequestAsync(WriteZeroes, 0x10, 0, 512));
            Assert.Equal((errno, "writing to file failed"), (r.ChunkError, r.ErrorMessage));
            r = Assert.Single(await c.RequestAsync(Trim, 0, 0, 512));
            Assert.Equal((errno, "discard failed"), (r.ChunkError, r.ErrorMessage));
            r = Assert.Single(await c.RequestAsync(Flush, 0, 0, 0));
            Assert.Equal((errno, "flush failed"), (r.ChunkError, r.ErrorMessage));
        }
        finally
        {
            _wrapped.Fail = null;
        }
        await using var simple = await OpenAsync("w", structured: false);
        _wrapped.Fail = failure;
        try
        {
            var r = Assert.Single(await simple.RequestAsync(Write, 0, 0, 512, new byte[512]));
            Assert.Equal((true, errno), (r.Simple, r.Error));
        }
        finally
        {
            _wrapped.Fail = null;
        }
    }

    [Fact]
    public async Task ReadFailures_AreErrorChunks()
    {
        await using var c = await OpenAsync("w");
        _wrapped.FailReads = new IOException("bad sector", 5);
        try
        {
            var r = Assert.Single(await c.RequestAsync(Read, 0, 0, 4096));
            Assert.Equal((5u, "unable to check for holes: Input/output error"), (r.ChunkError, r.ErrorMessage));
            r = Assert.Single(await c.RequestAsync(Read, 4, 0, 4096));
            Assert.Equal((5u, "reading from file failed"), (r.ChunkError, r.ErrorMessage));
        }
        finally
        {
            _wrapped.FailReads = null;
        }
    }

    [Fact]
    public async Task Disconnect_AnswersWhatCameBefore_ThenCloses()
    {
        await using var c = await OpenAsync("chain");
        await c.SendAsync(Cat(Request(Read, 4, 1, 0, 4096), Request(Disc, 0, 2, 0, 0)));
        var r = await c.ReadReplyAsync();
        Assert.Equal((1ul, 4096), (r.Cookie, r.DataLength));
        Assert.True(await c.IsClosedAsync());
    }

    [Fact]
    public async Task BadRequestMagic_DropsTheConnection()
    {
        await using var c = await OpenAsync("chain");
        var bad = Request(Read, 0, 1, 0, 512);
        bad[0] ^= 0xff;
        await c.SendAsync(bad);
        Assert.True(await c.IsClosedAsync());
    }
}
