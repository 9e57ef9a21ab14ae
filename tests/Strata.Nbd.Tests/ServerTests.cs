using System.Net;
using Strata.Images.Format;
using Strata.Nbd.Tests.Infrastructure;
using Xunit;
using static Strata.Nbd.Tests.Infrastructure.RawNbdClient;

namespace Strata.Nbd.Tests;

/// <summary>Exports added and removed at run time, listeners, connection limit, stop.</summary>
public sealed class ServerTests
{
    private const ushort Read = 0, Flush = 3;

    private static async Task<(TestServer Server, WrappedImage Image)> StartAsync(NbdServerOptions? options = null)
    {
        var server = await TestServer.StartAsync(options);
        string path = await TestImages.CreateEmptyAsync(server.Dir, "img");
        var image = new WrappedImage(await ImageOpener.OpenAsync(path, new ImageOpenOptions()));
        server.Export("d", image, new NbdExportOptions { Writable = true });
        return (server, image);
    }

    [Fact]
    public async Task ExportsCanBeAddedAndRemovedWhileRunning()
    {
        var (server, _) = await StartAsync();
        await using var _s = server;
        string other = await TestImages.CreateEmptyAsync(server.Dir, "other", "1M");
        await using var image = await ImageOpener.OpenAsync(other, new ImageOpenOptions());
        server.Server.AddExport(new NbdExport("e", image));
        Assert.Throws<InvalidOperationException>(() => server.Server.AddExport(new NbdExport("e", image)));

        await using (var c = await server.ConnectAsync())
        {
            var list = await c.OptionAsync(3);
            Assert.Equal(3, list.Count);
            await server.Server.RemoveExportAsync("e");
            list = await c.OptionAsync(3);
            Assert.Equal(2, list.Count);
            var go = Assert.Single(await c.GoAsync("e"));
            Assert.Equal("export 'e' not present", go.Text);
        }
        await Assert.ThrowsAsync<KeyNotFoundException>(() => server.Server.RemoveExportAsync("e"));
    }

    [Fact]
    public async Task SafeRemoval_IsRefusedWhileAClientUsesTheExport()
    {
        var (server, _) = await StartAsync();
        await using var _s = server;
        await using (var c = await server.ConnectAsync())
        {
            // Negotiating clients do not hold the export.
            await c.OptionAsync(3);
            await c.NegotiateAsync("d");
            Assert.Equal(1, server.Server.GetClientCount("d"));
            var e = await Assert.ThrowsAsync<NbdExportInUseException>(() => server.Server.RemoveExportAsync("d"));
            Assert.Equal("export 'd' still in use", e.Message);
            Assert.Equal(0u, Assert.Single(await c.RequestAsync(Flush, 0, 0, 0)).Error);
        }
        // Once the client has gone, safe removal works.
        for (int i = 0; i < 100 && server.Server.GetClientCount("d") > 0; i++)
            await Task.Delay(20);
        await server.Server.RemoveExportAsync("d");
        Assert.Empty(server.Server.Exports);
    }

    [Fact]
    public async Task HardRemoval_DisconnectsClients_AndWaitsForTheirRequests()
    {
        var (server, image) = await StartAsync();
        await using var _s = server;
        await using var c = await server.ConnectAsync();
        await c.NegotiateAsync("d");
        image.GateOffset = 0;
        await c.SendRequestAsync(Read, 4, 1, 0, 4096);
        await image.GateReached.Task.WaitAsync(TimeSpan.FromSeconds(10));

        var removal = server.Server.RemoveExportAsync("d", NbdExportRemoveMode.Hard);
        await Task.Delay(200);
        Assert.False(removal.IsCompleted); // a read is still running against the image
        image.ReleaseGate();
        await removal.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.True(await c.IsClosedAsync());
        Assert.Equal(0, server.Server.ConnectionCount);
    }

    [Fact]
    public async Task Stop_FinishesRequestsInFlight_SendsTheirReplies_ThenCloses()
    {
        var (server, image) = await StartAsync();
        await using var _s = server;
        await using var c = await server.ConnectAsync();
        await c.NegotiateAsync("d");
        image.GateOffset = 65536;
        await c.SendRequestAsync(Read, 4, 9, 65536, 4096);
        await image.GateReached.Task.WaitAsync(TimeSpan.FromSeconds(10));
        var stop = server.Server.StopAsync();
        await Task.Delay(200);
        Assert.False(stop.IsCompleted);
        image.ReleaseGate();
        var r = await c.ReadReplyAsync();
        Assert.Equal((9ul, 4096), (r.Cookie, r.DataLength));
        Assert.True(await c.IsClosedAsync());
        await stop.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.False(File.Exists(server.SocketPath));
    }

    [Fact]
    public async Task MaxConnections_FurtherClientsWaitInTheBacklog()
    {
        var (server, _) = await StartAsync(new NbdServerOptions { MaxConnections = 1 });
        await using var _s = server;
        var first = await server.ConnectAsync();
        await first.NegotiateAsync("d");
        await using var second = await RawNbdClient.ConnectAsync(server.SocketPath, clientFlags: null);
        Assert.True(await second.IsSilentAsync(TimeSpan.FromMilliseconds(300))); // no greeting yet
        await first.DisposeAsync();
        var greeting = await second.ReadGreetingAsync();
        Assert.Equal(18, greeting.Length);
        await second.SendAsync(U32(3));
        Assert.Equal(1u, (await second.OptionAsync(3))[^1].Type);
    }

    [Fact]
    public async Task TcpAndSeveralUnixListeners_ServeTheSameExports()
    {
        var (server, _) = await StartAsync();
        await using var _s = server;
        var tcp = server.Server.AddTcpListener(new IPEndPoint(IPAddress.Loopback, 0));
        string second = server.Dir.Combine("t.sock");
        server.Server.AddUnixListener(second);
        Assert.Equal(3, server.Server.EndPoints.Count);
        foreach (var ep in new EndPoint[] { tcp, new System.Net.Sockets.UnixDomainSocketEndPoint(second) })
        {
            await using var c = await RawNbdClient.ConnectAsync(ep);
            Assert.Equal((ushort)0x0ded, await c.NegotiateAsync("d"));
            Assert.Equal(0u, Assert.Single(await c.RequestAsync(Flush, 0, 0, 0)).Error);
        }
    }

    [Fact]
    public async Task ClientsThatVanish_DoNotDisturbTheServer()
    {
        var (server, _) = await StartAsync();
        await using var _s = server;
        for (int i = 0; i < 20; i++)
        {
            var c = await server.ConnectAsync();
            if (i % 2 == 0)
                await c.NegotiateAsync("d");
            // A request whose reply nobody reads, then gone.
            await c.SendRequestAsync(Read, 0, 1, 0, 1 << 20);
            await c.DisposeAsync();
        }
        await using var ok = await server.ConnectAsync();
        await ok.NegotiateAsync("d");
        Assert.Equal(0u, Assert.Single(await ok.RequestAsync(Flush, 0, 0, 0)).Error);
        for (int i = 0; i < 100 && server.Server.ConnectionCount > 1; i++)
            await Task.Delay(20);
        Assert.Equal(1, server.Server.ConnectionCount);
    }

    [Fact]
    public async Task ExportValidation()
    {
        using var dir = new TempDir();
        var raw = dir.Combine("r.raw");
        File.WriteAllBytes(raw, new byte[1000]);
        await using var image = await ImageOpener.OpenAsync(raw, new ImageOpenOptions { Format = "raw", ReadOnly = true });
        {
            var e = new NbdExport("x", image);
            Assert.Equal(512, e.Size); // whole sectors only, as QEMU
            Assert.Throws<ArgumentException>(() => new NbdExport("x", image, new NbdExportOptions { Writable = true }));
            Assert.Throws<ArgumentException>(() => new NbdExport(new string('n', 4097), image));
        }
    }
}
