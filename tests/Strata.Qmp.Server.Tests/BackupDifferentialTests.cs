using System.Text;
using System.Text.RegularExpressions;
using Xunit;

namespace Strata.Qmp.Server.Tests;

/// <summary>
/// Block jobs and backup, differential against qemu-storage-daemon: each scenario runs the same QMP lines on both
/// daemons and compares the replies, errors and events (names, statuses, payloads, order); a <c>#wait</c> step collects
/// the events of a job finishing in the background (a job that a cancel, or an empty bitmap, ends at once completes
/// before the command's reply, in both). Scenarios avoid racing a slow job's first chunk of I/O, whose timing decides
/// even in qsd whether a pause or cancel acts before or after the reply. Progress offsets are taken out where a job is stopped part way
/// (the two copy in different chunks). Afterwards every target image must check clean, and each daemon's targets
/// (read through their backing chains) must hold the same bytes.
/// </summary>
public sealed partial class BackupDifferentialTests
{
    private const string Caps = """{"execute":"qmp_capabilities"}""";

    private static Step E(string line) => new(line, Match.Exact);

    private static Step Wait(string text) => new(Step.WaitPrefix + text, Match.Exact);

    private static Step Null(string id) => Wait($"\"status\": \"null\", \"id\": \"{id}\"");

    private static Step Status(string id, string status) => Wait($"\"status\": \"{status}\", \"id\": \"{id}\"");

    private static Step Add(string node, string file, string extra = "") =>
        E("{\"execute\":\"blockdev-add\",\"arguments\":{\"driver\":\"qcow2\",\"node-name\":\"" + node + "\",\"file\":{\"driver\":\"file\",\"filename\":\"$D/" + file + "\"}" + extra + "}}");

    private static Step Del(string node) => E("{\"execute\":\"blockdev-del\",\"arguments\":{\"node-name\":\"" + node + "\"}}");

    private static Step Backup(string args) => E("{\"execute\":\"blockdev-backup\",\"arguments\":{" + args + "}}");

    private static Step Drive(string args) => E("{\"execute\":\"drive-backup\",\"arguments\":{" + args + "}}");

    private static Step Cmd(string command, string args = "") =>
        E("{\"execute\":\"" + command + "\"" + (args.Length > 0 ? ",\"arguments\":{" + args + "}" : "") + "}");

    private static readonly Step QueryJobs = Cmd("query-block-jobs");

    /// <summary>
    /// A short backup of another disk, run to its end: by then a slow job (speed 1) has landed its first chunk and
    /// sleeps, so what follows does not race with its I/O (in either daemon).
    /// </summary>
    private static Step[] Settle(string id) =>
    [
        Backup("\"job-id\":\"" + id + "\",\"device\":\"top\",\"target\":\"t3\",\"sync\":\"full\""),
        Null(id),
    ];

    /// <summary>The images every scenario starts with (8 MiB each): data, zero clusters, holes, a bitmap, a chain.</summary>
    private static void Prepare(string dir)
    {
        string P(string f) => Path.Combine(dir, f);
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", P("src.qcow2"), "8M").EnsureSuccess();
        QemuTools.QemuIo("-f", "qcow2", "-c", "write -P 1 0 1M", "-c", "write -P 2 3M 512k", "-c", "write -z 5M 1M", P("src.qcow2")).EnsureSuccess();
        // b0 records only what is written after it.
        QemuTools.QemuImg("bitmap", "--add", P("src.qcow2"), "b0").EnsureSuccess();
        QemuTools.QemuIo("-f", "qcow2", "-c", "write -P 3 512k 128k", "-c", "write -P 4 6M 64k", P("src.qcow2")).EnsureSuccess();
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", P("base.qcow2"), "8M").EnsureSuccess();
        QemuTools.QemuIo("-f", "qcow2", "-c", "write -P 5 0 2M", P("base.qcow2")).EnsureSuccess();
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", "-b", P("base.qcow2"), "-F", "qcow2", P("top.qcow2")).EnsureSuccess();
        QemuTools.QemuIo("-f", "qcow2", "-c", "write -P 6 1M 1M", "-c", "write -P 7 7M 64k", P("top.qcow2")).EnsureSuccess();
        foreach (var t in new[] { "t1.qcow2", "t2.qcow2", "t3.qcow2" })
            QemuTools.QemuImg("create", "-q", "-f", "qcow2", P(t), "8M").EnsureSuccess();
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", "-b", P("base.qcow2"), "-F", "qcow2", P("tb.qcow2")).EnsureSuccess();
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", "-b", P("src.qcow2"), "-F", "qcow2", P("tn.qcow2")).EnsureSuccess();
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", P("small.qcow2"), "4M").EnsureSuccess();
        foreach (var t in new[] { "t.raw", "t1.raw", "t2.raw", "t3.raw" })
            QemuTools.QemuImg("create", "-q", "-f", "raw", P(t), "8M").EnsureSuccess();
    }

    private static readonly Step[] Source = [E(Caps), Add("src", "src.qcow2")];

    private sealed record Scenario(Step[] Steps, string[] Targets, bool AnyOffset = false);

    private static readonly Dictionary<string, Scenario> Script = new()
    {
        ["full"] = new([
            .. Source, Add("t1", "t1.qcow2"),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"full\""),
            Null("j"),
            QueryJobs,
            Cmd("query-jobs"),
            Del("t1"),
        ], ["t1.qcow2"]),

        ["full compressed, manual finalize and dismiss"] = new([
            .. Source, Add("t1", "t1.qcow2"),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"full\",\"compress\":true,\"auto-finalize\":false,\"auto-dismiss\":false"),
            Status("j", "pending"),
            QueryJobs,
            Cmd("block-job-dismiss", "\"id\":\"j\""),
            // The job concludes before the reply (its events are part of it).
            Cmd("block-job-finalize", "\"id\":\"j\""),
            QueryJobs,
            Cmd("block-job-finalize", "\"id\":\"j\""),
            Cmd("block-job-dismiss", "\"id\":\"j\""),
            QueryJobs,
            Del("t1"),
        ], ["t1.qcow2"]),

        ["top"] = new([
            E(Caps), Add("src", "top.qcow2"), Add("tb", "tb.qcow2", ",\"backing\":null"),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"tb\",\"sync\":\"top\""),
            Null("j"),
            Del("tb"),
        ], ["tb.qcow2"]),

        ["none until cancelled"] = new([
            .. Source, Add("tn", "tn.qcow2", ",\"backing\":\"src\""),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"tn\",\"sync\":\"none\""),
            Cmd("block-job-complete", "\"device\":\"j\""),
            Cmd("block-job-cancel", "\"device\":\"j\""),
            QueryJobs,
            Del("tn"),
        ], ["tn.qcow2"], AnyOffset: true),

        ["incremental and bitmap modes"] = new([
            .. Source, Add("t1", "t1.qcow2"), Add("t2", "t2.qcow2"),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"bitmap\",\"bitmap\":\"b0\",\"bitmap-mode\":\"never\""),
            Null("j"),
            // The bitmap kept its bits: the incremental copies the same clusters again, then clears them.
            Backup("\"job-id\":\"k\",\"device\":\"src\",\"target\":\"t2\",\"sync\":\"incremental\",\"bitmap\":\"b0\""),
            Null("k"),
            Del("t1"), Del("t2"),
        ], ["t1.qcow2", "t2.qcow2"]),

        ["bitmap always, then an empty incremental"] = new([
            .. Source, Add("t1", "t1.qcow2"), Add("t2", "t2.qcow2"),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"full\",\"bitmap\":\"b0\",\"bitmap-mode\":\"always\""),
            Null("j"),
            Backup("\"job-id\":\"k\",\"device\":\"src\",\"target\":\"t2\",\"sync\":\"bitmap\",\"bitmap\":\"b0\",\"bitmap-mode\":\"on-success\""),
            Del("t1"), Del("t2"),
        ], ["t1.qcow2", "t2.qcow2"]),

        ["pause, speed, resume"] = new([
            .. Source, Add("t1", "t1.qcow2"),
            Add("top", "top.qcow2"), Add("t3", "t3.qcow2"),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"full\",\"speed\":1"),
            .. Settle("s"),
            Cmd("block-job-pause", "\"device\":\"j\""),
            Cmd("block-job-pause", "\"device\":\"j\""),
            QueryJobs,
            Cmd("block-job-set-speed", "\"device\":\"j\",\"speed\":-1"),
            Cmd("block-job-set-speed", "\"device\":\"j\",\"speed\":0"),
            Cmd("block-job-cancel", "\"device\":\"j\""),
            Cmd("block-job-resume", "\"device\":\"j\""),
            Null("j"),
            Cmd("block-job-resume", "\"device\":\"j\""),
            Del("t1"),
        ], ["t1.qcow2"], AnyOffset: true),

        ["cancel while running, paused and pending"] = new([
            .. Source, Add("t1", "t1.qcow2"), Add("t2", "t2.qcow2"), Add("top", "top.qcow2"), Add("t3", "t3.qcow2"),
            Backup("\"job-id\":\"a\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"full\",\"speed\":1"),
            .. Settle("s1"),
            Cmd("block-job-pause", "\"device\":\"a\""),
            Cmd("block-job-resume", "\"device\":\"a\""),
            QueryJobs,
            Cmd("block-job-cancel", "\"device\":\"a\""),
            Backup("\"job-id\":\"b\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"full\",\"speed\":1"),
            .. Settle("s2"),
            Cmd("job-pause", "\"id\":\"b\""),
            Cmd("block-job-cancel", "\"device\":\"b\",\"force\":true"),
            Backup("\"job-id\":\"c\",\"device\":\"src\",\"target\":\"t2\",\"sync\":\"full\",\"auto-finalize\":false"),
            Status("c", "pending"),
            Cmd("block-job-cancel", "\"device\":\"c\""),
            QueryJobs,
            Del("t1"), Del("t2"),
        ], [], AnyOffset: true),

        ["snapshot commands pause a running backup"] = new([
            // Each is a transaction of one action in QEMU: its drain pauses the job once, before the reply.
            .. Source, Add("t1", "t1.qcow2"), Add("top", "top.qcow2"), Add("t3", "t3.qcow2"),
            Backup("\"job-id\":\"a\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"full\",\"speed\":1"),
            .. Settle("s"),
            Cmd("blockdev-snapshot-sync", "\"node-name\":\"top\",\"snapshot-file\":\"$D/ov.qcow2\",\"snapshot-node-name\":\"ov\""),
            Cmd("blockdev-snapshot-internal-sync", "\"device\":\"t3\",\"name\":\"sn\""),
            Cmd("blockdev-snapshot-delete-internal-sync", "\"device\":\"t3\",\"name\":\"sn\""),
            QueryJobs,
            Cmd("block-job-cancel", "\"device\":\"a\""),
        ], [], AnyOffset: true),

        ["grouped transaction with a cancelled member"] = new([
            .. Source, Add("t1", "t1.qcow2"), Add("t2", "t2.qcow2"), Add("top", "top.qcow2"), Add("t3", "t3.qcow2"),
            E("""{"execute":"transaction","arguments":{"actions":[{"type":"blockdev-backup","data":{"job-id":"fast","device":"src","target":"t1","sync":"full"}},{"type":"blockdev-backup","data":{"job-id":"slow","device":"src","target":"t2","sync":"full","speed":1}}],"properties":{"completion-mode":"grouped"}}}"""),
            Status("fast", "waiting"),
            // Without it, qsd's slow job is still busy with its first chunk in about 1 run of 13 and pauses after the reply.
            .. Settle("s"),
            Cmd("block-job-pause", "\"device\":\"slow\""),
            Cmd("block-job-resume", "\"device\":\"slow\""),
            Cmd("block-job-cancel", "\"device\":\"slow\""),
            QueryJobs,
            // Individually, the same pair finishes one by one.
            E("""{"execute":"transaction","arguments":{"actions":[{"type":"blockdev-backup","data":{"job-id":"x","device":"src","target":"t1","sync":"full"}},{"type":"blockdev-backup","data":{"job-id":"x","device":"src","target":"t2","sync":"full"}}]}}"""),
            QueryJobs,
            E("""{"execute":"transaction","arguments":{"actions":[{"type":"blockdev-backup","data":{"job-id":"y","device":"src","target":"t1","sync":"full"}},{"type":"abort","data":{}}]}}"""),
            E("""{"execute":"transaction","arguments":{"actions":[{"type":"blockdev-backup","data":{"job-id":"z","device":"src","target":"t1","sync":"full"}},{"type":"blockdev-snapshot-sync","data":{"node-name":"src","snapshot-file":"$D/s.qcow2","snapshot-node-name":"s"}}],"properties":{"completion-mode":"grouped"}}}"""),
            QueryJobs,
            Del("t1"), Del("t2"),
        ], [], AnyOffset: true),

        ["drive-backup"] = new([
            .. Source,
            Drive("\"job-id\":\"f\",\"device\":\"src\",\"target\":\"$D/d-full.qcow2\",\"sync\":\"full\""),
            Null("f"),
            Drive("\"job-id\":\"r\",\"device\":\"src\",\"target\":\"$D/d.raw\",\"format\":\"raw\",\"sync\":\"full\""),
            Null("r"),
            Drive("\"job-id\":\"t\",\"device\":\"src\",\"target\":\"$D/d-top.qcow2\",\"sync\":\"top\""),
            Null("t"),
            Drive("\"job-id\":\"e\",\"device\":\"src\",\"target\":\"$D/t2.qcow2\",\"mode\":\"existing\",\"sync\":\"incremental\",\"bitmap\":\"b0\""),
            Null("e"),
            Drive("\"job-id\":\"n\",\"device\":\"src\",\"target\":\"$D/d-none.qcow2\",\"sync\":\"none\""),
            QueryJobs,
            Cmd("block-job-cancel", "\"device\":\"n\""),
        ], ["d-full.qcow2", "d.raw", "d-top.qcow2", "t2.qcow2", "d-none.qcow2"], AnyOffset: true),

        ["drive-backup of a chain"] = new([
            E(Caps), Add("src", "top.qcow2"),
            Drive("\"job-id\":\"t\",\"device\":\"src\",\"target\":\"$D/d-top.qcow2\",\"sync\":\"top\""),
            Null("t"),
            Drive("\"job-id\":\"f\",\"device\":\"src\",\"target\":\"$D/d-full.qcow2\",\"sync\":\"full\",\"format\":\"qcow2\""),
            Null("f"),
        ], ["d-top.qcow2", "d-full.qcow2"]),

        ["errors"] = new([
            .. Source, Add("t1", "t1.qcow2"), Add("small", "small.qcow2"),
            E("""{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"raw","file":{"driver":"file","filename":"$D/t.raw"}}}"""),
            Backup("\"job-id\":\"j\",\"device\":\"nope\",\"target\":\"t1\",\"sync\":\"full\""),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"nope\",\"sync\":\"full\""),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"src\",\"sync\":\"full\""),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"small\",\"sync\":\"full\""),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"raw\",\"sync\":\"full\",\"compress\":true"),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"incremental\""),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"bitmap\""),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"incremental\",\"bitmap\":\"b0\",\"bitmap-mode\":\"never\""),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"full\",\"bitmap\":\"nope\",\"bitmap-mode\":\"never\""),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"full\",\"bitmap\":\"b0\""),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"full\",\"bitmap\":\"b0\",\"bitmap-mode\":\"never\""),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"none\",\"bitmap\":\"b0\",\"bitmap-mode\":\"always\""),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"full\",\"bitmap-mode\":\"always\""),
            Backup("\"job-id\":\"1j\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"full\""),
            Backup("\"device\":\"src\",\"target\":\"t1\",\"sync\":\"full\""),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"full\",\"speed\":-1"),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"full\",\"filter-node-name\":\"t1\""),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"full\",\"filter-node-name\":\"1x\""),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"sideways\""),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"sync\":\"full\""),
            Drive("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"$D/no/such/dir/x.qcow2\",\"sync\":\"full\""),
            Drive("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"$D/x.img\",\"format\":\"bogus\",\"sync\":\"full\""),
            Drive("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"$D/missing.qcow2\",\"mode\":\"existing\",\"sync\":\"full\""),
            Drive("\"job-id\":\"j\",\"device\":\"nope\",\"target\":\"$D/x.qcow2\",\"sync\":\"full\""),
            Cmd("block-job-pause", "\"device\":\"nope\""),
            Cmd("block-job-resume", "\"device\":\"nope\""),
            Cmd("block-job-cancel", "\"device\":\"nope\""),
            Cmd("block-job-complete", "\"device\":\"nope\""),
            Cmd("block-job-set-speed", "\"device\":\"nope\",\"speed\":1"),
            Cmd("block-job-finalize", "\"id\":\"nope\""),
            Cmd("block-job-dismiss", "\"id\":\"nope\""),
            Cmd("block-job-set-speed", "\"device\":\"nope\""),
            // A second backup of a node under one, and a target in use.
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"full\",\"speed\":1,\"filter-node-name\":\"cbw\""),
            Backup("\"job-id\":\"j\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"full\""),
            Backup("\"job-id\":\"k\",\"device\":\"small\",\"target\":\"t1\",\"sync\":\"full\""),
            Del("t1"),
            Del("cbw"),
            Cmd("job-cancel", "\"id\":\"j\""),
            QueryJobs,
        ], [], AnyOffset: true),
    };

    private static readonly Dictionary<string, Scenario> All = new(Script.Concat(PolicyScript()));

    public static TheoryData<string> Scenarios => new(All.Keys);

    [GeneratedRegex("\"(offset|len)\": \\d+")]
    private static partial Regex Progress();

    private static Transcript WithoutOffsets(Transcript t) =>
        t with { Answers = [.. t.Answers.Select(a => (IReadOnlyList<string>)[.. a.Select(m => Progress().Replace(m, "\"$1\": N"))])] };

    /// <summary>Checks each target and dumps what it reads as (through its backing chain) as raw, next to the test.</summary>
    private static Action<string> Dump(string[] targets, string outDir, string who, StringBuilder checks) => dir =>
    {
        foreach (var t in targets)
        {
            string path = Path.Combine(dir, t);
            if (!File.Exists(path))
                continue;
            var check = t.EndsWith(".raw", StringComparison.Ordinal) ? null : QemuTools.QemuImg("check", "-U", path);
            if (check is { Succeeded: false } && who == "strata")
                lock (checks)
                    checks.AppendLine($"{who} {t}: qemu-img check failed: {check}");
            QemuTools.QemuImg("convert", "-U", "-O", "raw", path, Path.Combine(outDir, who + "-" + t + ".raw")).EnsureSuccess();
        }
    };

    [Theory]
    [MemberData(nameof(Scenarios))]
    public async Task Strata_runs_backups_as_qemu_storage_daemon(string scenario)
    {
        var s = All[scenario];
        using var outDir = new TempDir("bkd");
        var checks = new StringBuilder();
        var qsd = QmpScript.RunAsync(Daemons.Qsd, s.Steps, null, Prepare, Dump(s.Targets, outDir.Path, "qsd", checks));
        var strata = QmpScript.RunAsync(Daemons.Strata, s.Steps, null, Prepare, Dump(s.Targets, outDir.Path, "strata", checks));
        var expected = await qsd;
        var actual = await strata;
        if (s.AnyOffset)
        {
            expected = WithoutOffsets(expected);
            actual = WithoutOffsets(actual);
        }

        var report = QmpDifferentialTests.Differences(s.Steps, expected, actual);
        report.Append(checks);
        foreach (var t in s.Targets)
        {
            string e = Path.Combine(outDir.Path, "qsd-" + t + ".raw"), a = Path.Combine(outDir.Path, "strata-" + t + ".raw");
            if (File.Exists(e) != File.Exists(a))
            {
                report.AppendLine($"{t}: {(File.Exists(e) ? "strata" : "qsd")} did not make it");
                continue;
            }
            if (File.Exists(e) && !File.ReadAllBytes(e).AsSpan().SequenceEqual(File.ReadAllBytes(a)))
                report.AppendLine($"{t}: the targets differ");
        }

        Assert.True(report.Length == 0, report.ToString());
    }
}
