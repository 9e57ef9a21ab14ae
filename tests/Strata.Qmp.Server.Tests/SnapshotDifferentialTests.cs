using System.Text;
using Xunit;

namespace Strata.Qmp.Server.Tests;

/// <summary>
/// Live external snapshots and transactions, differential against qemu-storage-daemon 7.2: every scenario runs on
/// both daemons (each in its own directory, see <see cref="ScriptedDaemon.StartAsync"/>); every answer must agree
/// (exactly, or in shape where a step says why); after both quit, the same files must exist except the overlays qsd
/// leaves behind after a failed transaction (listed per scenario: Strata removes the files it created), and every
/// file must have the same qemu-img info --backing-chain and the same guest-visible contents.
/// </summary>
public static partial class SnapshotSuite
{
    private const string Caps = """{"execute":"qmp_capabilities"}""";
    private const string NbdStart = """{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"$D/nbd.sock"}}}}""";
    private const string Nodes = """{"execute":"query-named-block-nodes"}""";
    private const string FlatNodes = """{"execute":"query-named-block-nodes","arguments":{"flat":true}}""";
    private const string Exports = """{"execute":"query-block-exports"}""";
    private const string PermWhy = "backing edges: Strata does not share resize (qsd does); the nodes and edges must still match";

    internal static Step E(string line) => new(line, Match.Exact);

    private static Step Graph() => new("""{"execute":"x-debug-query-block-graph"}""", Match.Shape, PermWhy);

    private static string Add(string node, string file, string extra = "") =>
        "{\"execute\":\"blockdev-add\",\"arguments\":{\"driver\":\"qcow2\",\"node-name\":\"" + node + "\"" + extra +
        ",\"file\":{\"driver\":\"file\",\"filename\":\"" + file + "\"}}}";

    private static string Export(string id, string node, bool writable = true) =>
        "{\"execute\":\"block-export-add\",\"arguments\":{\"type\":\"nbd\",\"id\":\"" + id + "\",\"node-name\":\"" + node +
        "\",\"writable\":" + (writable ? "true" : "false") + "}}";

    private static string Sync(string data) => "{\"execute\":\"blockdev-snapshot-sync\",\"arguments\":" + data + "}";

    private static string SyncAct(string data) => "{\"type\":\"blockdev-snapshot-sync\",\"data\":" + data + "}";

    private static string Tx(params string[] actions) => "{\"execute\":\"transaction\",\"arguments\":{\"actions\":[" + string.Join(",", actions) + "]}}";

    /// <summary>Capabilities, the NBD server, d0 = b.qcow2 (backed by a.qcow2) exported writable as "d0".</summary>
    private static IEnumerable<Step> Exported() =>
        [E(Caps), E(NbdStart), E(Add("d0", "$D/b.qcow2")), E(Export("e0", "d0"))];

    private static IEnumerable<Step> Queries() => [E(Nodes), E(FlatNodes), E(Exports), Graph()];

    /// <summary>Runs one scenario on both daemons and fails with every difference found.</summary>
    /// <param name="differences">Steps whose replies differ by design, by index: each side's exact (normalised) reply.</param>
    public static async Task RunAsync(SnapshotScenario scenario, IReadOnlyDictionary<int, (string Qsd, string Strata)>? differences = null)
    {
        var starting = new[] { ScriptedDaemon.StartAsync(Daemons.Qsd), ScriptedDaemon.StartAsync(Daemons.Strata) };
        await Task.WhenAll(starting.Select(t => t.ContinueWith(_ => { }, TaskScheduler.Default)));
        await using var qsd = await starting[0];
        await using var strata = await starting[1];

        async Task<List<IReadOnlyList<string>>> RunAll(ScriptedDaemon d)
        {
            var answers = new List<IReadOnlyList<string>>();
            foreach (var step in scenario.Steps)
            {
                answers.Add(await d.StepAsync(step.Line));
            }

            await d.QuitAsync();
            return answers;
        }

        var runs = await Task.WhenAll(Task.Run(() => RunAll(qsd)), Task.Run(() => RunAll(strata)));
        var report = new StringBuilder();
        if (differences != null)
        {
            foreach (var (i, (q, st)) in differences)
            {
                string qa = string.Join("\n", runs[0][i]), sa = string.Join("\n", runs[1][i]);
                if (qa != q || sa != st)
                {
                    report.AppendLine($"step {i} {scenario.Steps[i].Line}: expected difference not seen");
                    report.AppendLine($"  qsd:    {qa}\n  wanted: {q}\n  strata: {sa}\n  wanted: {st}");
                }

                runs[0][i] = runs[1][i] = ["(compared above)"];
            }
        }

        CompareAnswers(scenario.Steps, runs[0], runs[1], report);
        CompareFiles(scenario, qsd, strata, report);
        Assert.True(report.Length == 0, report.ToString());
    }

    internal static void CompareAnswers(Step[] steps, List<IReadOnlyList<string>> e, List<IReadOnlyList<string>> a, StringBuilder report)
    {
        for (var i = 0; i < steps.Length; i++)
        {
            string? diff = null;
            if (e[i].Count != a[i].Count)
            {
                diff = $"{e[i].Count} vs {a[i].Count} messages";
            }

            for (var m = 0; diff is null && m < e[i].Count; m++)
            {
                bool json = e[i][m].StartsWith('{') && a[i][m].StartsWith('{');
                diff = steps[i].Match == Match.Shape && json
                    ? QmpScript.CompareShape(e[i][m], a[i][m])
                    : e[i][m] == a[i][m] ? null : "text differs";
            }

            if (diff is not null)
            {
                report.AppendLine($"step {i} {steps[i].Line}: {diff}");
                report.AppendLine("  qsd:    " + string.Join("\n          ", e[i]));
                report.AppendLine("  strata: " + string.Join("\n          ", a[i]));
            }
        }
    }

    internal static void CompareFiles(SnapshotScenario scenario, ScriptedDaemon qsd, ScriptedDaemon strata, StringBuilder report)
    {
        var qFiles = qsd.Files();
        var sFiles = strata.Files();
        var expected = new SortedSet<string>(sFiles, StringComparer.Ordinal);
        expected.UnionWith(scenario.QemuLeavesBehind);
        if (!qFiles.SetEquals(expected) || sFiles.Overlaps(scenario.QemuLeavesBehind))
        {
            report.AppendLine($"files: qsd [{string.Join(", ", qFiles)}]\n       strata [{string.Join(", ", sFiles)}]\n" +
                $"       qsd leaves behind [{string.Join(", ", scenario.QemuLeavesBehind)}]");
        }

        foreach (var f in sFiles.Where(qFiles.Contains))
        {
            string qi = qsd.Info(f), si = strata.Info(f);
            if (qi != si)
            {
                report.AppendLine($"qemu-img info {f}:\n  qsd:    {qi}\n  strata: {si}");
                continue;
            }

            if (!qi.StartsWith("exit 0", StringComparison.Ordinal))
            {
                continue;
            }

            var cmp = QemuTools.Run("qemu-img", "compare", "-q", Path.Combine(qsd.Directory, f), Path.Combine(strata.Directory, f));
            if (cmp.ExitCode != 0)
            {
                report.AppendLine($"contents of {f} differ (qemu-img compare exit {cmp.ExitCode}: {cmp.StdErr.Trim()})");
            }

            if (f.EndsWith(".qcow2", StringComparison.Ordinal))
            {
                var check = QemuTools.Run("qemu-img", "check", Path.Combine(strata.Directory, f));
                if (check.ExitCode != 0)
                {
                    report.AppendLine($"qemu-img check {f} on Strata's side: exit {check.ExitCode}: {check.StdOut.Trim()}");
                }
            }
        }
    }
}

/// <summary>The hand-written scenarios (each mode, argument and check); a class of its own so that it runs beside the generated ones.</summary>
public sealed class SnapshotDifferentialTests
{
    public static TheoryData<string> Names => new(SnapshotSuite.HandWritten.Keys);

    [Fact]
    public void The_suites_have_at_least_40_scenarios() =>
        Assert.True(SnapshotSuite.HandWritten.Count + SnapshotSuite.Generated.Count >= 40,
            $"{SnapshotSuite.HandWritten.Count} + {SnapshotSuite.Generated.Count} scenarios");

    [Theory]
    [MemberData(nameof(Names))]
    public Task Snapshots_behave_as_in_qemu_storage_daemon(string name) => SnapshotSuite.RunAsync(SnapshotSuite.HandWritten[name]);
}

/// <summary>The generated transactions: n actions failing at every position in turn.</summary>
public sealed class TransactionDifferentialTests
{
    public static TheoryData<string> Names => new(SnapshotSuite.Generated.Keys);

    [Theory]
    [MemberData(nameof(Names))]
    public Task Transactions_are_all_or_nothing_as_in_qemu_storage_daemon(string name) => SnapshotSuite.RunAsync(SnapshotSuite.Generated[name]);
}
