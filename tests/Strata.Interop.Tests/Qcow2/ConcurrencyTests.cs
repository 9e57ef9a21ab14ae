using System.Diagnostics;
using System.Globalization;
using Strata.Images.Format;
using Strata.Images.Qcow2;
using Strata.Images.Storage;
using Strata.Interop.Tests.Oracle;
using Strata.Interop.Tests.Qcow2.Model;
using Xunit;
using Xunit.Abstractions;

namespace Strata.Interop.Tests.Qcow2;

/// <summary>
/// 64 tasks hammer one qcow2 image through the engine API at once. Each owns a byte range (cut at random,
/// unaligned offsets, so neighbours share clusters and subclusters) and writes (allocating and in place), zeroes
/// (with and without MayUnmap), discards and reads it, checking its reads against the model exactly. Tasks also
/// read ranges owned by others while those are being changed ("tracked" reads): every byte must then show the
/// value it had when the read started or one that an op of the owner started since could have left. A flusher
/// task flushes now and then. Afterwards the image must be clean in qemu-img check and read as the model says in
/// QEMU and in Strata.
/// STRATA_CONCURRENCY_SECONDS sets the duration per configuration (default 10), STRATA_SEED the seed.
/// </summary>
public sealed class ConcurrencyTests(ITestOutputHelper output)
{
    private const int Tasks = 64;
    private const int LogCapacity = 128;

    public static TheoryData<string, long, bool, bool, long> Configs() => new()
    {
        // qemu-img -o options, virtual size, with a backing file, prefilled by qemu-io (normal and compressed
        // clusters), L2 cache bytes (0 = default)
        { "cluster_size=65536", 64L << 20, false, false, 0 },
        { "cluster_size=4096,refcount_bits=1", 32L << 20, false, true, 2 * 4096 },
        { "cluster_size=65536,extended_l2=on", 64L << 20, true, true, 0 },
        { "cluster_size=512,compat=0.10", 16L << 20, true, false, 4 * 512 },
        { "cluster_size=2097152,lazy_refcounts=on,refcount_bits=64", 64L << 20, false, true, 0 },
    };

    /// <summary>One op of a task, as far as other tasks' reads need it.</summary>
    private sealed record Change(long Seq, char Kind, long Offset, long Length, byte[]? Data);

    /// <summary>A task's range, its log of recent ops, and the lock that orders model updates against snapshots.</summary>
    private sealed class Region(long lo, long hi)
    {
        public long Lo { get; } = lo;
        public long Hi { get; } = hi;
        public object Gate { get; } = new();
        public long Started;   // ops started (the last one may be in flight)
        public long Applied;   // ops applied to the model
        public Queue<Change> Log { get; } = new();
    }

    [Theory]
    [MemberData(nameof(Configs))]
    public async Task ManyTasks_OnOneImage_StayConsistent(string opts, long size, bool withBacking, bool prefilled, long l2Cache)
    {
        QemuTools.RequireTools();
        double seconds = Environment.GetEnvironmentVariable("STRATA_CONCURRENCY_SECONDS") is { Length: > 0 } sec
            ? double.Parse(sec, CultureInfo.InvariantCulture)
            : 10;
        int seed = Environment.GetEnvironmentVariable("STRATA_SEED") is { Length: > 0 } s
            ? int.Parse(s, CultureInfo.InvariantCulture)
            : Random.Shared.Next();
        output.WriteLine($"{opts}, size {size}, backing {withBacking}, prefilled {prefilled}, l2 cache {l2Cache}: seed {seed}, {seconds} s, {Tasks} tasks");
        var cfg = CreateMatchesQemuImgTests.ParseOptions(opts) with { Size = size };
        int cs = cfg.ClusterSize;
        bool v3 = cfg.Version >= 3;
        var rng = new Random(seed);

        using var dir = new TempDir("conc");
        string path = dir.Combine("top.qcow2");
        var below = new byte[size];
        if (withBacking)
        {
            string basePath = dir.Combine("base.qcow2");
            QemuOracle.Create(basePath, new ImageConfig("qcow2", size));
            var cmds = new List<string> { "-f", "qcow2" };
            for (int i = 0; i < 40; i++)
            {
                long off = rng.NextInt64(size / 512) * 512;
                long len = Math.Min(size - off, rng.Next(1, 512) * 512L);
                cmds.AddRange(["-c", $"write -q -P 0x{rng.Next(1, 256):x2} {off} {len}"]);
            }
            cmds.Add(basePath);
            QemuTools.QemuIo([.. cmds]).EnsureSuccess();
            below = QemuOracle.ReadAll(basePath, dir.Path);
        }
        await using (await Qcow2Creator.CreateAsync(FileStorage.Create(path, FileStorageOptions.Default),
                         cfg with { BackingFile = withBacking ? "base.qcow2" : null, BackingFormat = withBacking ? "qcow2" : null }))
        {
        }
        var model = (byte[])below.Clone();
        if (prefilled)
        {
            // Compressed clusters first (QEMU 7.2 corrupts images when one session mixes compressed writes with
            // allocating ones), then ordinary ones in a second session.
            var compressed = new List<string> { "-f", "qcow2" };
            var plain = new List<string> { "-f", "qcow2" };
            var used = new HashSet<long>(); // QEMU compresses only into clusters that hold nothing yet
            for (int i = 0; i < 24; i++)
            {
                long off = rng.NextInt64(size / cs) * cs;
                if (used.Add(off))
                    compressed.AddRange(["-c", $"write -q -c -P 0x{rng.Next(1, 256):x2} {off} {Math.Min(cs, size - off)}"]);
                long poff = rng.NextInt64(size);
                plain.AddRange(["-c", $"write -q -P 0x{rng.Next(1, 256):x2} {poff} {Math.Min(size - poff, rng.Next(1, 300_000))}"]);
            }
            compressed.Add(path);
            plain.Add(path);
            QemuTools.QemuIo([.. compressed]).EnsureSuccess();
            QemuTools.QemuIo([.. plain]).EnsureSuccess();
            model = QemuOracle.ReadAll(path, dir.Path);
        }

        // Cut the disk into 64 ranges at random byte offsets (each at least 1 KiB).
        var cuts = new SortedSet<long> { 0, size };
        while (cuts.Count < Tasks + 1)
        {
            long c = rng.NextInt64(1, size);
            if (cuts.GetViewBetween(c - 1024, c + 1024).Count == 0)
                cuts.Add(c);
        }
        var bounds = cuts.ToArray();
        var regions = Enumerable.Range(0, Tasks).Select(t => new Region(bounds[t], bounds[t + 1])).ToArray();

        var img = await ImageOpener.OpenAsync(path, new ImageOpenOptions { Format = "qcow2", L2CacheSize = l2Cache > 0 ? l2Cache : null });
        var errors = new List<string>();
        long writes = 0, zeroes = 0, discards = 0, ownReads = 0, trackedReads = 0, untracked = 0, flushes = 0;
        var sw = Stopwatch.StartNew();
        var deadline = TimeSpan.FromSeconds(seconds);

        void Error(string e)
        {
            lock (errors)
                errors.Add($"at {sw.Elapsed.TotalSeconds:0.00} s: {e}");
        }

        void Apply(Change c)
        {
            switch (c.Kind)
            {
                case 'W':
                    c.Data!.CopyTo(model, c.Offset);
                    break;
                case 'Z':
                    model.AsSpan((int)c.Offset, (int)c.Length).Clear();
                    break;
                default:
                    var (ds, de) = DiskModel.DiscardedRange(c.Offset, c.Length, cs, size);
                    // Discarded clusters read as zero; a v2 image with a backing file keeps them (QEMU refuses that discard).
                    if (ds < de && (v3 || !withBacking))
                        model.AsSpan((int)ds, (int)(de - ds)).Clear();
                    break;
            }
        }

        // What a change may leave at byte 'at' (a discard: conservatively over its whole range).
        byte ValueOf(Change c, long at) => c.Kind switch
        {
            'W' => c.Data![at - c.Offset],
            'Z' => 0,
            _ => v3 || !withBacking ? (byte)0 : model[at],
        };

        bool Explains(List<Change> since, long at, byte v)
        {
            foreach (var c in since)
                if (at >= c.Offset && at < c.Offset + c.Length && ValueOf(c, at) == v)
                    return true;
            return false;
        }

        async Task Worker(int t)
        {
            var r = new Random(seed + t + 1);
            var me = regions[t];
            long lo = me.Lo, hi = me.Hi, span = hi - lo;
            while (sw.Elapsed < deadline)
            {
                long firstBoundary = (lo + cs - 1) / cs * cs;
                long off = r.Next(3) == 0 && firstBoundary < hi
                    ? firstBoundary + r.NextInt64((hi - firstBoundary + cs - 1) / cs) * cs
                    : lo + r.NextInt64(span);
                off = Math.Clamp(off, lo, hi - 1);
                long maxLen = Math.Min(hi - off, 3L * Math.Max(cs, 64 * 1024));
                long len = r.Next(4) == 0 ? Math.Min(maxLen, cs) : r.NextInt64(1, maxLen + 1);
                int k = r.Next(100);
                string what = "";
                try
                {
                    if (k < 62)
                    {
                        Change c;
                        if (k < 40)
                        {
                            var data = new byte[len];
                            if (r.Next(2) == 0)
                                r.NextBytes(data);
                            else
                                Array.Fill(data, (byte)r.Next(1, 256));
                            c = new Change(0, 'W', off, len, data);
                        }
                        else
                            c = new Change(0, k < 53 ? 'Z' : 'D', off, len, null);
                        lock (me.Gate)
                        {
                            c = c with { Seq = ++me.Started };
                            me.Log.Enqueue(c);
                            if (me.Log.Count > LogCapacity)
                                me.Log.Dequeue();
                        }
                        bool unmap = r.Next(2) == 0;
                        what = c.Kind switch { 'W' => "write", 'Z' => unmap ? "write-zeroes may-unmap" : "write-zeroes", _ => "discard" } + $" {off} +{len}";
                        switch (c.Kind)
                        {
                            case 'W':
                                await img.WriteAsync(c.Data, off);
                                Interlocked.Increment(ref writes);
                                break;
                            case 'Z':
                                await img.WriteZeroesAsync(off, len, unmap ? ZeroFlags.MayUnmap : ZeroFlags.None);
                                Interlocked.Increment(ref zeroes);
                                break;
                            default:
                                await img.DiscardAsync(off, len);
                                Interlocked.Increment(ref discards);
                                break;
                        }
                        lock (me.Gate)
                        {
                            Apply(c);
                            me.Applied = c.Seq;
                        }
                    }
                    else if (k < 82)
                    {
                        // Own range: exact.
                        what = $"read {off} +{len}";
                        var buf = new byte[len];
                        await img.ReadAsync(buf, off);
                        Interlocked.Increment(ref ownReads);
                        var d = DiskModel.Compare(model.AsSpan((int)off, (int)len), buf, off, cs);
                        if (d != null)
                        {
                            Error($"task {t} (range {lo}..{hi}) {what}: {d}");
                            return;
                        }
                    }
                    else
                    {
                        // Anywhere, while the owners keep changing it: tracked.
                        long roff = r.NextInt64(size);
                        long rlen = Math.Min(size - roff, r.NextInt64(1, 256 * 1024 + 1));
                        what = $"tracked read {roff} +{rlen}";
                        var owners = regions.Where(g => g.Lo < roff + rlen && g.Hi > roff).ToArray();
                        var snap = new byte[rlen];
                        var applied = new long[owners.Length];
                        for (int i = 0; i < owners.Length; i++)
                        {
                            lock (owners[i].Gate)
                            {
                                applied[i] = owners[i].Applied;
                                long a = Math.Max(roff, owners[i].Lo), b = Math.Min(roff + rlen, owners[i].Hi);
                                model.AsSpan((int)a, (int)(b - a)).CopyTo(snap.AsSpan((int)(a - roff)));
                            }
                        }
                        var buf = new byte[rlen];
                        await img.ReadAsync(buf, roff);
                        for (int i = 0; i < owners.Length; i++)
                        {
                            List<Change> since;
                            bool complete;
                            lock (owners[i].Gate)
                            {
                                since = [.. owners[i].Log.Where(c => c.Seq > applied[i])];
                                complete = owners[i].Started == applied[i] || owners[i].Log.Any(c => c.Seq == applied[i] + 1);
                            }
                            if (!complete)
                            {
                                Interlocked.Increment(ref untracked);
                                continue;
                            }
                            long a = Math.Max(roff, owners[i].Lo), b = Math.Min(roff + rlen, owners[i].Hi);
                            for (long at = a; at < b; at++)
                            {
                                // Skip the bytes that still read as at the start (most of them) in one go.
                                at += buf.AsSpan((int)(at - roff), (int)(b - at)).CommonPrefixLength(snap.AsSpan((int)(at - roff), (int)(b - at)));
                                if (at >= b)
                                    break;
                                byte v = buf[at - roff];
                                if (Explains(since, at, v))
                                    continue;
                                Error($"task {t} {what}: byte {at} (0x{at:x}, cluster {at / cs} +0x{at % cs:x}) of task {Array.IndexOf(regions, owners[i])}'s range " +
                                      $"reads 0x{v:x2}; it was 0x{snap[at - roff]:x2} when the read started and the owner's ops since " +
                                      $"({(since.Count == 0 ? "none" : string.Join(", ", since.Select(c => $"{c.Kind} {c.Offset} +{c.Length}")))}) cannot leave it");
                                return;
                            }
                        }
                        Interlocked.Increment(ref trackedReads);
                    }
                }
                catch (Exception e)
                {
                    Error($"task {t} (range {lo}..{hi}) {what} threw {e}");
                    return;
                }
            }
        }

        async Task Flusher()
        {
            var r = new Random(seed);
            while (sw.Elapsed < deadline)
            {
                await Task.Delay(r.Next(5, 80));
                try
                {
                    await img.FlushAsync();
                    Interlocked.Increment(ref flushes);
                }
                catch (Exception e)
                {
                    Error($"flush threw {e}");
                    return;
                }
            }
        }

        var all = Enumerable.Range(0, Tasks).Select(t => Task.Run(() => Worker(t))).Append(Task.Run(Flusher)).ToArray();
        // A hang is a failure too: give the tasks the duration plus a generous grace period.
        await Task.WhenAny(Task.WhenAll(all), Task.Delay(deadline + TimeSpan.FromSeconds(60)));
        if (all.Any(t => !t.IsCompleted))
            Assert.Fail($"seed {seed}, {opts}: {all.Count(t => !t.IsCompleted)} tasks still running 60 s after the deadline (deadlock?)");
        output.WriteLine($"{writes} writes, {zeroes} write-zeroes, {discards} discards, {ownReads} exact reads, {trackedReads} tracked reads " +
                         $"({untracked} range parts not verifiable), {flushes} flushes in {sw.Elapsed.TotalSeconds:0.0} s");

        try
        {
            await img.FlushAsync();
            var buf = new byte[size];
            await img.ReadAsync(buf, 0);
            var d = DiskModel.Compare(model, buf, 0, cs);
            if (d != null)
                errors.Add($"Strata reads the whole disk differently from the model after the run: {d}");
        }
        catch (Exception e)
        {
            errors.Add($"final flush/read threw {e}");
        }
        finally
        {
            try
            {
                await img.DisposeAsync();
            }
            catch (Exception e)
            {
                errors.Add($"close threw {e}");
            }
        }

        var chk = QemuOracle.Check(path);
        if (!chk.Clean)
            errors.Add($"qemu-img check is not clean: {chk}");
        var q = QemuOracle.ReadAll(path, dir.Path);
        var qd = DiskModel.Compare(model, q, 0, cs);
        if (qd != null)
            errors.Add($"QEMU (qemu-img convert) reads differently from the model: {qd}");
        await using (var ro = await ImageOpener.OpenAsync(path, new ImageOpenOptions { ReadOnly = true }))
        {
            var buf = new byte[size];
            await ro.ReadAsync(buf, 0);
            var rd = DiskModel.Compare(model, buf, 0, cs);
            if (rd != null)
                errors.Add($"Strata (reopened read-only) reads differently from the model: {rd}");
        }

        if (errors.Count > 0)
            Assert.Fail($"seed {seed}, {opts}, size {size}, backing {withBacking}, prefilled {prefilled}, l2 cache {l2Cache}: {errors.Count} problem(s):{Environment.NewLine}" +
                        string.Join(Environment.NewLine, errors.Take(10)));
    }
}
