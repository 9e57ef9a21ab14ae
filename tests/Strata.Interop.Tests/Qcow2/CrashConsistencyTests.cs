using System.Diagnostics;
using System.Globalization;
using Strata.Images.Format;
using Strata.Interop.Tests.Oracle;
using Strata.Interop.Tests.Qcow2.Model;
using Xunit;
using Xunit.Abstractions;

namespace Strata.Interop.Tests.Qcow2;

/// <summary>
/// Crash consistency: strata-crash-writer (tests/Strata.CrashWriter) writes, zeroes and discards through the
/// library (up to four ops in flight, flushes concurrent with them), reporting on stdout each op before it is
/// issued and, after each completed flush, the ops it made durable; the test SIGKILLs it at a
/// random moment and then checks that qemu-img check finds no corruption (leaks are allowed) and that every op
/// acknowledged before the last completed flush reads back, in QEMU and in Strata, except where a later (possibly
/// unfinished) op overlaps it, whose bytes may show any of the values those ops could have left.
/// With lazy refcounts a killed image is dirty: qemu-img check -r all must repair it, and Strata must repair it
/// when it opens it read-write.
/// STRATA_CRASH_KILLS sets the kills per configuration (default 7), STRATA_SEED the seed.
/// </summary>
public sealed class CrashConsistencyTests(ITestOutputHelper output)
{
    private const long Size = 32L << 20;

    public static TheoryData<string, bool> Configs() => new()
    {
        // qemu-img -o options of the image the child creates, whether it has a backing file
        { "cluster_size=65536", false },
        { "cluster_size=512,refcount_bits=1", false },
        { "cluster_size=4096", true },
        { "cluster_size=65536,extended_l2=on", true },
        { "cluster_size=2097152,refcount_bits=64", false },
        { "cluster_size=65536,lazy_refcounts=on", false },
        { "cluster_size=16384,extended_l2=on,lazy_refcounts=on", true },
        { "cluster_size=65536,compat=0.10", true },
    };

    private sealed record LoggedOp(long Id, char Kind, long Offset, long Length, int Arg);

    [Theory]
    [MemberData(nameof(Configs))]
    public async Task KilledWriter_LeavesAConsistentImage_WithFlushedDataIntact(string opts, bool withBacking)
    {
        QemuTools.RequireTools();
        int kills = Environment.GetEnvironmentVariable("STRATA_CRASH_KILLS") is { Length: > 0 } k
            ? int.Parse(k, CultureInfo.InvariantCulture)
            : 7;
        int seed = Environment.GetEnvironmentVariable("STRATA_SEED") is { Length: > 0 } s
            ? int.Parse(s, CultureInfo.InvariantCulture)
            : Random.Shared.Next();
        var cfg = CreateMatchesQemuImgTests.ParseOptions(opts);
        output.WriteLine($"{opts}, backing {withBacking}: seed {seed}, {kills} kills");
        var rng = new Random(seed);
        var problems = new List<string>();
        var sw = Stopwatch.StartNew();
        int dirtyKills = 0;
        long durableOps = 0, loggedOps = 0;

        using var dir = new TempDir("crash");
        byte[] below = new byte[Size];
        string basePath = dir.Combine("base.qcow2");
        if (withBacking)
        {
            QemuOracle.Create(basePath, new ImageConfig("qcow2", Size, 65536));
            var cmds = new List<string> { "-f", "qcow2" };
            for (int i = 0; i < 40; i++)
            {
                long off = rng.NextInt64(Size / 512) * 512;
                long len = Math.Min(Size - off, rng.Next(1, 1024) * 512L);
                cmds.AddRange(["-c", $"write -q -P 0x{rng.Next(1, 256):x2} {off} {len}"]);
            }
            cmds.Add(basePath);
            QemuTools.QemuIo([.. cmds]).EnsureSuccess();
            below = QemuOracle.ReadAll(basePath, dir.Path);
        }

        for (int kill = 0; kill < kills; kill++)
        {
            int childSeed = rng.Next();
            int delayMs = rng.Next(10) == 0 ? rng.Next(0, 20) : rng.Next(20, 900);
            string run = $"kill {kill} (child seed {childSeed}, killed {delayMs} ms after READY)";
            string sub = dir.Combine($"k{kill}");
            Directory.CreateDirectory(sub);
            if (withBacking)
                File.Copy(basePath, Path.Combine(sub, "base.qcow2"));
            string image = Path.Combine(sub, "disk.qcow2");

            string[] args = [image, Size.ToString(CultureInfo.InvariantCulture), opts, childSeed.ToString(CultureInfo.InvariantCulture)];
            if (withBacking)
                args = [.. args, "base.qcow2", "qcow2"];
            var (log, early) = await CrashWriterChild.RunAndKillAsync(args, delayMs);
            if (early != null)
            {
                problems.Add($"{run}: {early}");
                continue;
            }
            var ops = new List<LoggedOp>();
            long flushed = 0;
            foreach (var line in log)
            {
                var p = line.Split(' ');
                if (p[0] == "O")
                    ops.Add(new LoggedOp(long.Parse(p[1], CultureInfo.InvariantCulture), p[2][0], long.Parse(p[3], CultureInfo.InvariantCulture),
                        long.Parse(p[4], CultureInfo.InvariantCulture), int.Parse(p[5], CultureInfo.InvariantCulture)));
                else if (p[0] == "F")
                    flushed = Math.Max(flushed, long.Parse(p[1], CultureInfo.InvariantCulture));
            }
            loggedOps += ops.Count;
            durableOps += flushed;
            var verifier = new Verifier(ops, flushed, below, cfg.Version, cfg.ClusterSize, withBacking);
            string desc = $"{run}: {ops.Count} ops logged, ops 1..{flushed} flushed";

            if (QemuOracle.IsMarkedCorrupt(image))
                problems.Add($"{desc}: the image is marked corrupt");
            bool dirty = QemuOracle.IsDirty(image);
            if (dirty)
            {
                dirtyKills++;
                if (!cfg.LazyRefcounts)
                    problems.Add($"{desc}: the dirty bit is set on an image without lazy refcounts");
                var before = QemuOracle.Check(image);
                output.WriteLine($"{desc}: dirty; before repair {before.Corruptions} corruptions, {before.Leaks} leaks (exit {before.ExitCode})");

                // QEMU repairs a copy...
                string a = Path.Combine(sub, "qemu-repaired.qcow2");
                File.Copy(image, a);
                var rep = QemuOracle.Check(a, "all");
                if (rep.ExitCode != 0 || rep.Corruptions != 0 || rep.CheckErrors != 0)
                    problems.Add($"{desc}: qemu-img check -r all did not repair it: {rep}");
                else if (QemuOracle.Check(a) is { Clean: false } after)
                    problems.Add($"{desc}: not clean after qemu-img check -r all: {after}");
                if (verifier.Check(QemuOracle.ReadAll(a, sub)) is { } bad)
                    problems.Add($"{desc}: after qemu-img check -r all, QEMU reads: {bad}");

                // ...and Strata repairs another one when it opens it read-write.
                string b = Path.Combine(sub, "strata-repaired.qcow2");
                File.Copy(image, b);
                try
                {
                    await using (var img = await ImageOpener.OpenAsync(b, new ImageOpenOptions()))
                    {
                        var buf = new byte[Size];
                        await img.ReadAsync(buf, 0);
                        if (verifier.Check(buf) is { } sbad)
                            problems.Add($"{desc}: Strata (opened read-write, repairing) reads: {sbad}");
                    }
                    if (QemuOracle.Check(b) is { Clean: false } chk)
                        problems.Add($"{desc}: after Strata's repair on open, qemu-img check is not clean: {chk}");
                    else if (verifier.Check(QemuOracle.ReadAll(b, sub)) is { } qbad)
                        problems.Add($"{desc}: after Strata's repair on open, QEMU reads: {qbad}");
                }
                catch (Exception e)
                {
                    problems.Add($"{desc}: Strata could not open the dirty image read-write (repair on open): {e.GetType().Name}: {e.Message}");
                }
            }
            else
            {
                var chk = QemuOracle.Check(image);
                if (!chk.NoCorruption)
                    problems.Add($"{desc}: {chk}");
                if (verifier.Check(QemuOracle.ReadAll(image, sub)) is { } bad)
                    problems.Add($"{desc}: QEMU reads: {bad}");
                try
                {
                    // Strata reads the same, and opening and closing it read-write must not make things worse.
                    await using (var img = await ImageOpener.OpenAsync(image, new ImageOpenOptions()))
                    {
                        var buf = new byte[Size];
                        await img.ReadAsync(buf, 0);
                        if (verifier.Check(buf) is { } sbad)
                            problems.Add($"{desc}: Strata reads: {sbad}");
                    }
                    if (QemuOracle.Check(image) is { NoCorruption: false } again)
                        problems.Add($"{desc}: after Strata opened and closed it read-write: {again}");
                }
                catch (Exception e)
                {
                    problems.Add($"{desc}: Strata failed on the killed image: {e.GetType().Name}: {e.Message}");
                }
            }
            Directory.Delete(sub, recursive: true);
        }

        output.WriteLine($"{kills} kills in {sw.Elapsed.TotalSeconds:0.0} s: {loggedOps} ops logged, {durableOps} acknowledged by a flush, {dirtyKills} images left dirty");
        if (problems.Count > 0)
            Assert.Fail($"seed {seed}, {opts}, backing {withBacking}: {problems.Count} problem(s) in {kills} kills " +
                        $"(replay with STRATA_SEED={seed} and --filter \"FullyQualifiedName~CrashConsistencyTests\"):{Environment.NewLine}" +
                        string.Join(Environment.NewLine, problems.Take(12)));
    }

    /// <summary>
    /// What may be read after the kill: the state after ops 1..flushed, except bytes that later logged ops touch,
    /// which may also show any value one of those ops could have left there.
    /// </summary>
    private sealed class Verifier
    {
        private readonly List<LoggedOp> _ops;
        private readonly long _flushed;
        private readonly int _version;
        private readonly bool _hasBacking;
        private readonly int _cs;
        private readonly byte[] _expected;
        private readonly List<LoggedOp> _later;

        public Verifier(List<LoggedOp> ops, long flushed, byte[] below, int version, int clusterSize, bool hasBacking)
        {
            _ops = ops;
            _flushed = flushed;
            _version = version;
            _hasBacking = hasBacking;
            _cs = clusterSize;
            _expected = (byte[])below.Clone();
            foreach (var op in ops.Where(o => o.Id <= flushed))
            {
                switch (op.Kind)
                {
                    case 'W':
                        _expected.AsSpan((int)op.Offset, (int)op.Length).Fill((byte)op.Arg);
                        break;
                    case 'Z':
                        _expected.AsSpan((int)op.Offset, (int)op.Length).Clear();
                        break;
                    case 'D':
                        var (s, e) = DiskModel.DiscardedRange(op.Offset, op.Length, clusterSize, Size);
                        // Discarded clusters read as zero; a v2 image with a backing file keeps them (QEMU refuses that discard).
                        if (s < e && (version >= 3 || !hasBacking))
                            _expected.AsSpan((int)s, (int)(e - s)).Clear();
                        break;
                }
            }
            _later = [.. ops.Where(o => o.Id > flushed)];
        }

        private bool Allows(List<LoggedOp> candidates, long at, byte value)
        {
            foreach (var o in candidates)
            {
                if (at < o.Offset || at >= o.Offset + o.Length)
                    continue;
                // A discard leaves zeroes, except on a v2 image with a backing file, where it changes nothing.
                int? v = o.Kind switch
                {
                    'W' => o.Arg,
                    'Z' => 0,
                    _ => _version >= 3 || !_hasBacking ? 0 : null,
                };
                if (v == value)
                    return true;
            }
            return false;
        }

        public string? Check(byte[] actual)
        {
            if (actual.Length != _expected.Length)
                return $"{actual.Length} bytes instead of {_expected.Length}";
            int pos = 0;
            while (pos < actual.Length)
            {
                pos += actual.AsSpan(pos).CommonPrefixLength(_expected.AsSpan(pos));
                if (pos >= actual.Length)
                    break;
                // A run of differing bytes: only later ops over it can explain it.
                int runEnd = pos;
                while (runEnd < actual.Length && actual[runEnd] != _expected[runEnd])
                    runEnd++;
                var candidates = _later.Where(o => o.Offset < runEnd && o.Offset + o.Length > pos).ToList();
                for (int at = pos; at < runEnd; at++)
                {
                    if (Allows(candidates, at, actual[at]))
                        continue;
                    var last = _ops.LastOrDefault(o => o.Id <= _flushed && at >= o.Offset && at < o.Offset + o.Length);
                    var overlapping = candidates.Where(o => at >= o.Offset && at < o.Offset + o.Length).Select(Describe).ToList();
                    int end = at;
                    while (end < runEnd && !Allows(candidates, end, actual[end]))
                        end++;
                    return $"byte {at} (0x{at:x}, cluster {at / _cs} +0x{at % _cs:x}) reads 0x{actual[at]:x2}, expected 0x{_expected[at]:x2} " +
                           $"({(last == null ? "never written: backing/zero" : "from flushed op " + Describe(last))}); {end - at} such bytes from there; " +
                           $"later ops over it: {(overlapping.Count == 0 ? "none" : string.Join(", ", overlapping))}";
                }
                pos = runEnd;
            }
            return null;
        }

        private static string Describe(LoggedOp o) =>
            $"#{o.Id} {o.Kind switch { 'W' => $"write 0x{o.Arg:x2}", 'Z' => o.Arg == 1 ? "zero (unmap)" : "zero", _ => "discard" }} {o.Offset} +{o.Length}";
    }
}
