using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Sockets;
using System.Security.Cryptography;
using Strata.Nbd.Tests.Infrastructure;
using Xunit;
using Xunit.Abstractions;
using static Strata.Nbd.Tests.Infrastructure.RawNbdClient;

namespace Strata.Nbd.Tests;

/// <summary>
/// Random and mutated handshakes and requests from several clients at once (at least 10^5 requests, bounded to about 45 s); afterwards the
/// server still answers, the read-only image is unchanged and both images pass qemu-img check.
/// </summary>
public sealed class FuzzTests(ITestOutputHelper output)
{
    private const int MinRequests = 100_000;
    private static readonly TimeSpan Budget = TimeSpan.FromSeconds(45);

    [Fact]
    public async Task RandomAndMutatedTraffic_LeavesTheServerAndImagesIntact()
    {
        int seed = Environment.GetEnvironmentVariable("STRATA_FUZZ_SEED") is { Length: > 0 } s ? int.Parse(s, System.Globalization.CultureInfo.InvariantCulture) : Random.Shared.Next();
        output.WriteLine($"seed {seed} (STRATA_FUZZ_SEED reproduces it)");
        using var dir = new TempDir("fuzz");
        string rw, ro;
        long requests = 0, connections = 0;
        var roHashBefore = Array.Empty<byte>();
        var log = new RecordingLogger();
        await using (var server = await TestServer.StartAsync(new NbdServerOptions { MaxRequestsPerConnection = 16 }, dir, log))
        {
            rw = await TestImages.CreateChainAsync(dir, "rw");
            ro = await TestImages.CreateChainAsync(dir, "ro");
            await server.ExportFileAsync("w", rw, new NbdExportOptions { Writable = true, AllocationDepth = true });
            await server.ExportFileAsync("ro", ro, new NbdExportOptions { AllocationDepth = true });
            roHashBefore = await HashThroughServerAsync(server, "ro");

            var sw = Stopwatch.StartNew();
            var workers = Enumerable.Range(0, 4).Select(w => Task.Run(async () =>
            {
                var rnd = new Random(seed + w);
                while (sw.Elapsed < Budget && Interlocked.Read(ref requests) < 2 * MinRequests)
                {
                    Interlocked.Increment(ref connections);
                    int sent = await OneConnectionAsync(server.SocketPath, rnd);
                    Interlocked.Add(ref requests, sent);
                }
            })).ToArray();
            await Task.WhenAll(workers);
            output.WriteLine($"{requests} requests over {connections} connections in {sw.Elapsed.TotalSeconds:F1} s");
            Assert.True(requests >= MinRequests, $"only {requests} requests in {Budget}");

            // Still serving, and the read-only export was not touched.
            await using (var c = await server.ConnectAsync())
            {
                await c.NegotiateAsync("w", true, "base:allocation");
                Assert.Equal(0u, Assert.Single(await c.RequestAsync(3, 0, 0, 0)).Error);
                Assert.Equal(0u, Assert.Single(await c.RequestAsync(7, 0, 0, 1 << 20, cookie: 2)).ContextId);
            }
            Assert.Equal(Convert.ToHexString(roHashBefore), Convert.ToHexString(await HashThroughServerAsync(server, "ro")));
            for (int i = 0; i < 200 && server.Server.ConnectionCount > 0; i++)
                await Task.Delay(25);
            Assert.Equal(0, server.Server.ConnectionCount);
        }
        Assert.Empty(log.Problems);
        foreach (var image in new[] { rw, ro })
        {
            var check = await Tools.QemuImg("check", image);
            Assert.True(check.ExitCode == 0, check.StdOut + check.StdErr);
        }
    }

    private static async Task<byte[]> HashThroughServerAsync(TestServer server, string export)
    {
        await using var c = await server.ConnectAsync();
        await c.NegotiateAsync(export);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        for (long off = 0; off < TestImages.Size; off += 8 << 20)
        {
            var r = Assert.Single(await c.RequestAsync(0, 4, (ulong)off, 8 << 20));
            hash.AppendData(r.Payload, 8, r.Payload.Length - 8);
        }
        return hash.GetHashAndReset();
    }

    /// <summary>One client: a (possibly broken) handshake, then a batch of (possibly broken) requests. Returns requests sent.</summary>
    private static async Task<int> OneConnectionAsync(string socketPath, Random rnd)
    {
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath));
        var drain = DrainAsync(socket);
        int sent = 0;
        try
        {
            var bytes = new List<byte>();
            string export = rnd.Next(3) == 0 ? "ro" : "w";
            bool structured = rnd.Next(4) != 0;
            bytes.AddRange(U32(rnd.Next(20) == 0 ? (uint)rnd.Next() : 3u));
            if (structured)
                bytes.AddRange(Option(8, []));
            if (rnd.Next(2) == 0)
                bytes.AddRange(Option(10, MetaPayload(export, RandomQueries(rnd))));
            if (rnd.Next(10) == 0)
                bytes.AddRange(Option((uint)rnd.Next(12), RandomBytes(rnd, rnd.Next(64))));
            bytes.AddRange(rnd.Next(8) == 0 ? Option(1, Str(export)) : Option(7, InfoPayload(export, 3, 1)));
            var handshake = bytes.ToArray();
            if (rnd.Next(6) == 0)
                Mutate(rnd, handshake);
            await socket.SendAsync(handshake);

            var batch = new List<byte>();
            int count = rnd.Next(20, 120);
            for (int i = 0; i < count; i++)
            {
                batch.AddRange(RandomRequest(rnd, (ulong)i));
                sent++;
            }
            var all = batch.ToArray();
            if (rnd.Next(5) == 0)
                Mutate(rnd, all);
            if (rnd.Next(5) == 0)
                all = all[..rnd.Next(all.Length)];
            await socket.SendAsync(all);
            socket.Shutdown(rnd.Next(4) == 0 ? SocketShutdown.Both : SocketShutdown.Send);
        }
        catch (SocketException)
        {
            // The server may drop a broken client at any point.
        }
        await drain;
        return sent;
    }

    private static async Task DrainAsync(Socket socket)
    {
        var buffer = new byte[1 << 16];
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        try
        {
            while (await socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token) > 0)
            {
            }
        }
        catch (SocketException)
        {
        }
        catch (OperationCanceledException)
        {
            throw new TimeoutException("the server neither answered nor closed a fuzzed connection within 30 s");
        }
    }

    private static byte[] Option(uint option, byte[] data)
    {
        var b = new byte[16 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(b, OptsMagic);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(12), (uint)data.Length);
        data.CopyTo(b, 16);
        return b;
    }

    private static string[] RandomQueries(Random rnd)
    {
        string[] pool = ["base:allocation", "qemu:allocation-depth", "qemu:", "base:", "", "x:y", "qemu:dirty-bitmap:"];
        return Enumerable.Range(0, rnd.Next(4)).Select(_ => pool[rnd.Next(pool.Length)]).ToArray();
    }

    private static byte[] RandomBytes(Random rnd, int n)
    {
        var b = new byte[n];
        rnd.NextBytes(b);
        return b;
    }

    private static void Mutate(Random rnd, byte[] data)
    {
        if (data.Length == 0)
            return;
        int flips = rnd.Next(1, 4);
        for (int i = 0; i < flips; i++)
            data[rnd.Next(data.Length)] ^= (byte)(1 << rnd.Next(8));
    }

    private static byte[] RandomRequest(Random rnd, ulong cookie)
    {
        const long size = TestImages.Size;
        ushort type = rnd.Next(10) == 0 ? (ushort)rnd.Next(12) : (ushort)new[] { 0, 0, 0, 1, 1, 3, 4, 5, 6, 7, 7 }[rnd.Next(11)];
        ushort flags = rnd.Next(3) == 0 ? (ushort)rnd.Next(64) : (ushort)0;
        ulong offset = rnd.Next(6) switch
        {
            0 => (ulong)size - (ulong)rnd.Next(0, 8192),
            1 => (ulong)rnd.NextInt64(),
            _ => (ulong)(rnd.NextInt64(size / 512) * 512),
        };
        uint length = rnd.Next(8) switch
        {
            0 => (uint)rnd.Next(),
            1 => (32u << 20) + (uint)rnd.Next(2),
            2 => 0,
            _ => (uint)rnd.Next(1, 256) * 512,
        };
        if (type == 2 && rnd.Next(4) != 0)
            type = 0; // not too many clean disconnects
        if (type == 1)
        {
            if (length > 1 << 20 && rnd.Next(8) != 0)
                length = (uint)rnd.Next(1, 128) * 512;
            int payload = length > 1 << 20 ? 0 : (int)length;
            if (rnd.Next(8) == 0 && payload > 0)
                payload = rnd.Next(payload); // a truncated payload: the rest of the batch becomes its data
            return Request(type, flags, cookie, offset, length, RandomBytes(rnd, payload));
        }
        var r = Request(type, flags, cookie, offset, length);
        if (rnd.Next(200) == 0)
            r[rnd.Next(4)] ^= 0x40; // bad magic
        return r;
    }
}
