using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using Strata.Block;
using Strata.Block.Snapshots;
using Strata.Block.Transactions;
using Strata.Server;
using Xunit;
using Xunit.Abstractions;

namespace Strata.Qmp.Server.Tests;

/// <summary>
/// Atomicity under load, through the C# API (no QMP): four qcow2 disks exported over NBD, a client per disk writing
/// numbered sectors (each write to its own sector, so every layer keeps it; paced so that they last), while 200
/// transactions snapshot all four. Each snapshot set must be a consistent cut: it holds every write acknowledged
/// before the transaction began, none submitted after it returned, and with any write all writes acknowledged before
/// that one was submitted (on any disk). Most transactions must run with a write in flight. At the end no
/// acknowledged write is missing from the tops, and qemu-img check finds every file clean.
/// </summary>
public sealed class SnapshotAtomicityTests(ITestOutputHelper output)
{
    private const int Disks = 4;
    private const int Sectors = 8192; // 4 MiB disks
    private const int Snapshots = 200;

    [Fact]
    public async Task Transactions_under_NBD_writes_take_consistent_cuts()
    {
        var dir = Path.Combine("/var/tmp/strata-tests", "atomic-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(dir);
        try
        {
            await RunAsync(dir);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private async Task RunAsync(string dir)
    {
        var daemon = new StorageDaemon();
        var layers = new List<BlockNode[]>(); // layers[k][d]: disk d's top before snapshot k (frozen by it)
        var tops = new BlockNode[Disks];
        long[,] submitted = new long[Disks, Sectors], acked = new long[Disks, Sectors];
        int[] written = new int[Disks];
        int[] begun = new int[1];
        var txTimes = new List<(long Start, long End)>();
        var clock = Stopwatch.StartNew();
        await using (daemon)
        {
            string sock = Path.Combine(dir, "nbd.sock");
            await daemon.StartNbdServerAsync(new UnixNbdAddress(sock));
            for (int d = 0; d < Disks; d++)
            {
                QemuTools.QemuImg("create", "-q", "-f", "qcow2", Path.Combine(dir, $"d{d}.qcow2"), $"{Sectors / 2}K").EnsureSuccess();
                tops[d] = await daemon.Graph.AddAsync(new JsonObject
                {
                    ["driver"] = "qcow2", ["node-name"] = $"d{d}",
                    ["file"] = new JsonObject { ["driver"] = "file", ["filename"] = Path.Combine(dir, $"d{d}.qcow2") },
                });
                daemon.AddExport(new ExportRequest($"e{d}", $"d{d}", Writable: true));
            }

            using var stop = new CancellationTokenSource();
            var writers = Enumerable.Range(0, Disks).Select(d => Task.Run(async () =>
            {
                await using var client = await MiniNbdClient.ConnectAsync(sock, $"d{d}");
                var data = new byte[512];
                for (int i = 0; i < Sectors && !stop.IsCancellationRequested; i++)
                {
                    // Paced by the transactions begun, so that the sectors last until the last one.
                    while (i >= (Volatile.Read(ref begun[0]) + 2L) * Sectors / (Snapshots + 2) && !stop.IsCancellationRequested)
                        await Task.Delay(1);
                    BinaryPrimitives.WriteUInt64BigEndian(data, ((ulong)(d + 1) << 32) | (uint)(i + 1));
                    submitted[d, i] = clock.ElapsedTicks;
                    await client.WriteAsync(data, i * 512L);
                    acked[d, i] = clock.ElapsedTicks;
                    written[d] = i + 1;
                }
            })).ToArray();

            for (int k = 0; k < Snapshots; k++)
            {
                await Task.Delay(5);
                var actions = Enumerable.Range(0, Disks).Select(d => (ITransactionAction)new ExternalSnapshotAction(
                    new SnapshotSyncRequest(null, tops[d].NodeName, Path.Combine(dir, $"s{k}_{d}.qcow2"), $"s{k}_{d}"))).ToArray();
                Volatile.Write(ref begun[0], k + 1);
                long start = clock.ElapsedTicks;
                await BlockTransaction.RunAsync(daemon.Graph, actions);
                long end = clock.ElapsedTicks;
                txTimes.Add((start, end));
                layers.Add((BlockNode[])tops.Clone());
                for (int d = 0; d < Disks; d++)
                    tops[d] = daemon.Graph.Find($"s{k}_{d}") ?? throw new InvalidOperationException($"s{k}_{d} missing");
                Assert.All(daemon.Exports, e => Assert.Contains(e.NodeName, tops.Select(t => t.NodeName)));
            }

            await stop.CancelAsync();
            await Task.WhenAll(writers);
            output.WriteLine($"{Snapshots} transactions in {clock.ElapsedMilliseconds} ms, writes per disk: {string.Join(", ", written)}");

            // Which writes each frozen layer (read through its chain) holds.
            var buffer = new byte[Sectors * 512];
            for (int k = 0; k < Snapshots; k++)
            {
                var inLayer = new bool[Disks, Sectors];
                for (int d = 0; d < Disks; d++)
                {
                    await layers[k][d].ReadAsync(buffer, 0);
                    for (int i = 0; i < Sectors; i++)
                        inLayer[d, i] = Holds(buffer, d, i);
                }

                var (start, end) = txTimes[k];
                long latestSubmit = 0;
                for (int d = 0; d < Disks; d++)
                    for (int i = 0; i < written[d]; i++)
                    {
                        if (acked[d, i] < start)
                            Assert.True(inLayer[d, i], $"snapshot {k}: write {d}/{i} acknowledged before the transaction is missing");
                        if (submitted[d, i] > end)
                            Assert.False(inLayer[d, i], $"snapshot {k}: write {d}/{i} submitted after the transaction is in the snapshot");
                        if (inLayer[d, i])
                            latestSubmit = Math.Max(latestSubmit, submitted[d, i]);
                    }

                for (int d = 0; d < Disks; d++)
                    for (int i = 0; i < written[d]; i++)
                        if (acked[d, i] < latestSubmit)
                            Assert.True(inLayer[d, i], $"snapshot {k} is not a consistent cut: write {d}/{i} was acknowledged before a write it holds was sent");
            }

            for (int d = 0; d < Disks; d++)
            {
                await tops[d].ReadAsync(buffer, 0);
                for (int i = 0; i < written[d]; i++)
                    Assert.True(Holds(buffer, d, i), $"acknowledged write {d}/{i} lost");
            }

            Assert.True(written.Sum() > Disks * 20, $"only {written.Sum()} writes: the load did not overlap the snapshots");
            int underLoad = txTimes.Count(t => Enumerable.Range(0, Disks).Any(d =>
                Enumerable.Range(0, written[d]).Any(i => submitted[d, i] <= t.End && acked[d, i] >= t.Start)));
            output.WriteLine($"{underLoad} transactions with a write in flight");
            Assert.True(underLoad >= Snapshots / 2, $"only {underLoad} of {Snapshots} transactions ran while a write was in flight");
        }

        // Each file's own metadata, its backing chain not opened (up to 200 deep); a few at a time.
        Parallel.ForEach(Directory.GetFiles(dir, "*.qcow2"), new ParallelOptions { MaxDegreeOfParallelism = 4 }, f =>
            QemuTools.QemuImg("check", "-q", "json:" + new JsonObject
            {
                ["driver"] = "qcow2", ["backing"] = null, ["file"] = new JsonObject { ["driver"] = "file", ["filename"] = f },
            }.ToJsonString()).EnsureSuccess());
    }

    private static bool Holds(byte[] buffer, int disk, int sector) =>
        BinaryPrimitives.ReadUInt64BigEndian(buffer.AsSpan(sector * 512)) == (((ulong)(disk + 1) << 32) | (uint)(sector + 1));

    /// <summary>Just enough NBD for the test: fixed newstyle, NBD_OPT_GO, simple replies, one write at a time.</summary>
    private sealed class MiniNbdClient : IAsyncDisposable
    {
        private readonly Socket _socket;
        private readonly NetworkStream _stream;
        private ulong _cookie;

        private MiniNbdClient(Socket socket)
        {
            _socket = socket;
            _stream = new NetworkStream(socket);
        }

        public static async Task<MiniNbdClient> ConnectAsync(string path, string export)
        {
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(path));
            var c = new MiniNbdClient(socket);
            await c.ReadAsync(18); // NBDMAGIC, IHAVEOPT, handshake flags
            await c._stream.WriteAsync(new byte[] { 0, 0, 0, 3 }); // fixed newstyle, no zeroes
            var name = Encoding.UTF8.GetBytes(export);
            var opt = new byte[16 + 4 + name.Length + 2];
            BinaryPrimitives.WriteUInt64BigEndian(opt, 0x49484156454F5054);
            BinaryPrimitives.WriteUInt32BigEndian(opt.AsSpan(8), 7); // NBD_OPT_GO
            BinaryPrimitives.WriteUInt32BigEndian(opt.AsSpan(12), (uint)(4 + name.Length + 2));
            BinaryPrimitives.WriteUInt32BigEndian(opt.AsSpan(16), (uint)name.Length);
            name.CopyTo(opt, 20);
            await c._stream.WriteAsync(opt);
            while (true)
            {
                var head = await c.ReadAsync(20);
                uint type = BinaryPrimitives.ReadUInt32BigEndian(head.AsSpan(12));
                await c.ReadAsync((int)BinaryPrimitives.ReadUInt32BigEndian(head.AsSpan(16)));
                if (type == 1)
                    return c; // NBD_REP_ACK
                if ((type & 0x80000000) != 0)
                    throw new IOException($"NBD_OPT_GO refused: 0x{type:x}");
            }
        }

        public async Task WriteAsync(byte[] data, long offset)
        {
            var req = new byte[28 + data.Length];
            BinaryPrimitives.WriteUInt32BigEndian(req, 0x25609513);
            BinaryPrimitives.WriteUInt16BigEndian(req.AsSpan(6), 1); // NBD_CMD_WRITE
            BinaryPrimitives.WriteUInt64BigEndian(req.AsSpan(8), ++_cookie);
            BinaryPrimitives.WriteUInt64BigEndian(req.AsSpan(16), (ulong)offset);
            BinaryPrimitives.WriteUInt32BigEndian(req.AsSpan(24), (uint)data.Length);
            data.CopyTo(req, 28);
            await _stream.WriteAsync(req);
            var reply = await ReadAsync(16);
            uint error = BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(4));
            if (error != 0)
                throw new IOException($"NBD write at {offset} failed: error {error}");
        }

        private async Task<byte[]> ReadAsync(int n)
        {
            var b = new byte[n];
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            await _stream.ReadExactlyAsync(b, cts.Token);
            return b;
        }

        public async ValueTask DisposeAsync()
        {
            await _stream.DisposeAsync();
            _socket.Dispose();
        }
    }
}
