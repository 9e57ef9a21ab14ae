using System.Globalization;
using System.Text.Json;
using Strata.Images.Qcow2;
using Strata.Images.Storage;
using Strata.Interop.Tests.Qcow2.Model;
using Strata.Testing;
using Xunit;
using Xunit.Abstractions;

namespace Strata.Interop.Tests.Qcow2;

/// <summary>
/// Crash safety of snapshot create, delete and apply: strata-crash-writer (snapshot mode) writes, flushes and runs
/// the operation in a loop and is SIGKILLed at a random moment. Afterwards:
/// <list type="bullet">
/// <item>qemu-img check finds no corruption (leaked clusters are allowed; an OFLAG_COPIED report is not). A kill
/// can only find one while an operation's refcount blocks and tables are being written, back to back with no flush
/// between (QEMU's own snapshot code has an fdatasync there, see qcow2_update_snapshot_refcount); when it happens the
/// failure says whether <c>check -r leaks</c> repairs the image, i.e. whether only that window was hit;</item>
/// <item>the snapshot table (as qemu-img info lists it) is the one before or the one after the interrupted operation;</item>
/// <item>every listed snapshot reads as the disk read when it was made, and the active disk reads as before the
/// operation or (apply) as the snapshot, bytes of an unfinished write aside.</item>
/// </list>
/// STRATA_SNAPSHOT_CRASH_KILLS sets the kills per operation (default 30), STRATA_SEED the seed.
/// </summary>
public sealed class SnapshotCrashTests(ITestOutputHelper output)
{
    private const long Size = 2L << 20;
    private static readonly string[] Configs = ["cluster_size=4096", "compat=0.10,cluster_size=65536", "cluster_size=16384,extended_l2=on", "cluster_size=1024,refcount_bits=8"];

    [Theory]
    [InlineData("create")]
    [InlineData("delete")]
    [InlineData("apply")]
    public async Task KilledSnapshotOperation_LeavesOldOrNewTable_AndNoCorruption(string mode)
    {
        QemuTools.RequireTools();
        int kills = Environment.GetEnvironmentVariable("STRATA_SNAPSHOT_CRASH_KILLS") is { Length: > 0 } k ? int.Parse(k, CultureInfo.InvariantCulture) : 30;
        int seed = Environment.GetEnvironmentVariable("STRATA_SEED") is { Length: > 0 } s ? int.Parse(s, CultureInfo.InvariantCulture) : Random.Shared.Next();
        var rng = new Random(seed);
        var problems = new List<string>();
        int inOp = 0, leakExplained = 0;
        using var dir = new TempDir("snapcrash");
        var plans = Enumerable.Range(0, kills).Select(kill => (Kill: kill, Seed: rng.Next(), Delay: rng.Next(5, 300))).ToList();
        // Three children at a time: most of each run is process start-up and waiting.
        foreach (var batch in plans.Chunk(3))
        {
            var results = await Task.WhenAll(batch.Select(b => KillOnceAsync(dir, mode, b.Kill, b.Seed, b.Delay)));
            foreach (var (problem, hitOp, explained) in results)
            {
                if (problem != null)
                    problems.Add(problem);
                inOp += hitOp ? 1 : 0;
                leakExplained += explained ? 1 : 0;
            }
        }
        output.WriteLine($"{mode}: seed {seed}, {kills} kills, {inOp} inside a snapshot operation, {leakExplained} with leak-explained COPIED reports, {problems.Count} problem(s)");
        Assert.True(problems.Count == 0, $"seed {seed}: {problems.Count} problem(s):\n" + string.Join("\n", problems.Take(8)));
        Assert.True(leakExplained == 0, $"seed {seed}: {leakExplained} of {kills} kills found refcounts written without their COPIED flags (check -r leaks repairs them)");
        Assert.True(inOp >= kills / 6, $"seed {seed}: only {inOp} of {kills} kills hit a snapshot operation");
    }

    private static async Task<(string? Problem, bool InOp, bool LeakExplained)> KillOnceAsync(TempDir dir, string mode, int kill, int childSeed, int delayMs)
    {
        string opts = Configs[kill % Configs.Length];
        string image = dir.Combine($"k{kill}.qcow2");
        string run = $"{mode} kill {kill} ({opts}, child seed {childSeed}, {delayMs} ms)";
        var (lines, early) = await CrashWriterChild.RunAndKillAsync(["snapshot", mode, image, Size.ToString(CultureInfo.InvariantCulture), opts, childSeed.ToString(CultureInfo.InvariantCulture)], delayMs);
        if (early != null)
            return ($"{run}: {early}", false, false);
        var m = Replay(lines);
        bool explained = false;
        string? problem = null;
        var chk = QemuOracle.Check(image);
        if (!chk.NoCorruption)
        {
            string copy = image + ".repaired";
            File.Copy(image, copy);
            var rep = QemuOracle.Check(copy, "leaks");
            var after = QemuOracle.Check(copy);
            if (rep.ExitCode != 0 || !after.Clean)
                problem = $"{run}, killed in [{m.Pending ?? "a write"}]: {chk}\nand after check -r leaks: {after}";
            else
                explained = true;
        }
        var table = ListSnapshots(image);
        string now = Describe(table);
        bool tableOk = now == Describe(m.Before) || (m.Pending != null && now == Describe(m.After));
        if (!tableOk)
            problem ??= $"{run}: snapshot table [{now}], expected [{Describe(m.Before)}]" + (m.Pending != null ? $" or [{Describe(m.After)}]" : "");
        else if (await CheckContentsAsync(image, m, table) is { } bad)
            problem ??= $"{run}: {bad}";
        File.Delete(image);
        File.Delete(image + ".repaired");
        return (problem, m.Pending != null, explained);
    }

    private sealed record Snap(string Id, string Name, byte[] Content);

    /// <summary>The state the log describes: before the last operation, after it (if it was interrupted), and the write in flight.</summary>
    private sealed class Model
    {
        public byte[] Active = new byte[Size];
        public List<Snap> Before = [];
        public List<Snap> After = [];
        public string? Pending;            // the operation begun but not finished
        public byte[]? ActiveAfter;        // apply in flight: what the disk becomes
        public (long Off, long Len, byte Value)? UnfinishedWrite;
    }

    private static Model Replay(List<string> lines)
    {
        var m = new Model();
        var snaps = new List<Snap>();
        (long, long, byte)? write = null;
        foreach (var line in lines)
        {
            var p = line.Split(' ', 4);
            switch (p[0])
            {
                case "W":
                    write = (long.Parse(p[1], CultureInfo.InvariantCulture), long.Parse(p[2], CultureInfo.InvariantCulture), byte.Parse(p[3], CultureInfo.InvariantCulture));
                    break;
                case "F":
                    var (off, len, v) = write!.Value;
                    m.Active.AsSpan((int)off, (int)len).Fill(v);
                    write = null;
                    break;
                case "B":
                    m.Pending = line;
                    m.Before = [.. snaps];
                    var after = new List<Snap>(snaps);
                    m.ActiveAfter = null;
                    switch (p[1])
                    {
                        case "create": after.Add(new Snap(p[2], p[3], (byte[])m.Active.Clone())); break;
                        case "delete": after.RemoveAll(x => x.Id == p[2]); break;
                        default: m.ActiveAfter = (byte[])snaps.First(x => x.Id == p[2]).Content.Clone(); break;
                    }
                    m.After = after;
                    break;
                case "E":
                    snaps = m.After;
                    if (m.ActiveAfter != null)
                        m.Active = m.ActiveAfter;
                    m.Pending = null;
                    m.ActiveAfter = null;
                    break;
            }
        }
        if (m.Pending == null)
            m.Before = m.After = snaps;
        m.UnfinishedWrite = write;
        return m;
    }

    private static List<(string Id, string Name)> ListSnapshots(string image)
    {
        var res = QemuTools.QemuImg("info", "--output=json", "-U", image).EnsureSuccess();
        using var doc = JsonDocument.Parse(res.StdOut);
        var list = new List<(string, string)>();
        if (doc.RootElement.TryGetProperty("snapshots", out var sn))
            foreach (var e in sn.EnumerateArray())
                list.Add((e.GetProperty("id").GetString()!, e.GetProperty("name").GetString()!));
        return list;
    }

    private static string Describe(IEnumerable<(string Id, string Name)> l) => string.Join(",", l.Select(x => $"{x.Id}:{x.Name}"));
    private static string Describe(List<Snap> l) => Describe(l.Select(x => (x.Id, x.Name)));

    private static async Task<string?> CheckContentsAsync(string image, Model m, List<(string Id, string Name)> table)
    {
        var known = m.Before.Concat(m.After).GroupBy(x => x.Id).ToDictionary(g => g.Key, g => g.First());
        await using var img = await Qcow2Image.OpenAsync(FileStorage.Open(image, FileStorageOptions.Default with { ReadOnly = true }),
            new Qcow2OpenOptions { ReadOnly = true });
        foreach (var (id, _) in table)
        {
            await using var view = await img.OpenSnapshotAsync(id, null);
            var got = new byte[Size];
            await view.ReadAsync(got, 0);
            if (!got.AsSpan().SequenceEqual(known[id].Content))
                return $"snapshot {id} reads differently from the disk when it was made";
        }
        var active = QemuOracle.ReadAll(image, Path.GetDirectoryName(image)!);
        bool Matches(byte[] expect)
        {
            for (int i = 0; i < expect.Length; i++)
            {
                if (active[i] == expect[i])
                    continue;
                if (m.UnfinishedWrite is { } w && i >= w.Off && i < w.Off + w.Len && active[i] == w.Value)
                    continue;
                return false;
            }
            return true;
        }
        if (!Matches(m.Active) && !(m.ActiveAfter != null && Matches(m.ActiveAfter)))
            return "the active disk (as qemu-img reads it) is neither the state before nor after the operation";
        return null;
    }
}
