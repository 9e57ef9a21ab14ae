using Xunit;

namespace Strata.Qmp.Server.Tests;

/// <summary>
/// blkdebug (QEMU's fault injection) on both daemons: the same rules, given as blockdev-add options or as a config
/// file, must fail the same NBD requests with the same errors, move through the same states, and fail the same
/// transaction actions. Read errors use EIO: qsd drops the connection when a structured read fails, so its clients
/// see EIO whatever the errno, where Strata answers with the errno in an error chunk.
/// </summary>
public static partial class SnapshotSuite
{
    private static string AddBlkdebug(string node, string image, string rules, string format = "qcow2") =>
        "{\"execute\":\"blockdev-add\",\"arguments\":{\"driver\":\"" + format + "\",\"node-name\":\"" + node + "\"," +
        "\"file\":{\"driver\":\"blkdebug\"" + rules + ",\"image\":{\"driver\":\"file\",\"filename\":\"" + image + "\"}}}}";

    private static string AddRawBlkdebug(string node, string image, string rules) =>
        "{\"execute\":\"blockdev-add\",\"arguments\":{\"driver\":\"blkdebug\",\"node-name\":\"" + node + "\"" + rules +
        ",\"image\":{\"driver\":\"file\",\"filename\":\"" + image + "\"}}}";

    public static Dictionary<string, SnapshotScenario> Blkdebug { get; } = new()
    {
        ["blkdebug alone: sector filter, iotype, errno and once over NBD"] = Sc([
            E(Caps), E(NbdStart),
            E(AddRawBlkdebug("bd", "$D/r.raw", ""","inject-error":[{"event":"none","iotype":"read","sector":8,"once":true},""" +
                """{"event":"none","iotype":"write","sector":100,"errno":28},{"event":"none","iotype":"write","sector":200,"errno":0},""" +
                """{"event":"none","iotype":"write","errno":1}]""")),
            E(Export("e", "bd")),
            E("io bd read 0 4k"),
            E("io bd read 0 8k"),
            E("io bd read 0 8k"),
            E("io bd write -P 7 40k 4k"),
            E("io bd write -P 7 48k 4k"),
            E("io bd write -P 7 96k 8k"),
            E("io bd write -P 7 100k 4k"),
            E("io bd write -z 44k 8k"),
            E("io bd read -P 0 40k 4k"),
            E("io bd discard 0 4k"),
        ]),
        ["qcow2 over blkdebug: set-state moves the state, rules wait for theirs"] = Sc([
            E(Caps), E(NbdStart),
            E(AddBlkdebug("d", "$D/a.qcow2", ""","inject-error":[{"event":"write_aio","state":2,"iotype":"write","errno":28}]""" +
                ""","set-state":[{"event":"read_aio","state":1,"new_state":2},{"event":"write_aio","state":2,"new_state":3},""" +
                """{"event":"write_aio","state":3,"new_state":1}]""")),
            E(Export("e", "d")),
            E("io d write -P 1 0 4k"),
            E("io d read -P 1 0 4k"),
            E("io d write -P 2 0 4k"),
            E("io d write -P 3 0 4k"),
            E("io d read -P 1 0 4k"),
            E("io d write -P 4 0 4k"),
            E("io d read -P 4 0 4k"),
        ]),
        ["qcow2 over blkdebug: once and immediately on data and metadata events"] = Sc([
            E(Caps), E(NbdStart),
            E(AddBlkdebug("d", "$D/c.qcow2", ""","inject-error":[{"event":"cluster_alloc","iotype":"write","once":true,"immediately":true},""" +
                """{"event":"write_aio","iotype":"write","sector":2048,"errno":28}]""")),
            E(Export("e", "d")),
            E("io d write -P 1 0 4k"),
            E("io d write -P 2 0 4k"),
            E("io d read -P 2 0 4k"),
            E("io d write -P 3 1M 4k"),
            E("io d write -P 3 1032k 4k"),
            E("io d read -P 3 1032k 4k"),
        ]),
        ["blkdebug config file: inject-error and set-state sections"] = Sc([
            E(Caps), E(NbdStart),
            E("file bd.cfg # rules\\n[inject-error]\\nevent = \"read_aio\"\\nstate = \"2\"\\nonce = \"on\"\\n\\n" +
                "[set-state]\\nevent = \"write_aio\"\\nstate = \"1\"\\nnew_state = \"2\"\\n"),
            E("{\"execute\":\"blockdev-add\",\"arguments\":{\"driver\":\"qcow2\",\"node-name\":\"d\",\"file\":{\"driver\":\"blkdebug\"," +
                "\"config\":\"$D/bd.cfg\",\"image\":{\"driver\":\"file\",\"filename\":\"$D/a.qcow2\"}}}}"),
            E(Export("e", "d")),
            E("io d read -P 0x11 0 4k"),
            E("io d write -P 5 0 4k"),
            E("io d read -P 5 0 4k"),
            E("io d read -P 5 0 4k"),
        ]),
    };

    /// <summary>
    /// Issue 6, acceptance 3: eight exported disks, each qcow2 over blkdebug whose config fails the first flush that
    /// reaches it, all written in place by a client that dies without a flush, so that each one's next flush fails; then eight transactions of eight
    /// blockdev-snapshot-sync actions: the external snapshot flushes each disk before taking it, so transaction p gets
    /// as far as disk p and fails there. Every disk must stay on its old image with its contents, Strata must leave no
    /// overlay behind (qsd keeps the ones of the actions before the failure) and name the failing node (qsd says only
    /// "An IO error has occurred"). A last transaction then succeeds on all eight.
    /// </summary>
    public static (SnapshotScenario Scenario, Dictionary<int, (string Qsd, string Strata)> Differences) TransactionOfEightWithBlkdebug()
    {
        const int n = 8;
        var steps = new List<Step>
        {
            E(Caps), E(NbdStart),
            E("file eio.cfg [inject-error]\\nevent = \"none\"\\niotype = \"flush\"\\nonce = \"on\"\\n"),
            E("file enospc.cfg [inject-error]\\nevent = \"none\"\\niotype = \"flush\"\\nerrno = \"28\"\\nonce = \"on\"\\n"),
        };
        var left = new List<string>();
        var differences = new Dictionary<int, (string, string)>();
        for (int i = 0; i < n; i++)
        {
            string cfg = i == 3 ? "enospc.cfg" : "eio.cfg";
            steps.Add(E($"img create -q -f qcow2 -o preallocation=falloc x{i}.qcow2 1M"));
            steps.Add(E("{\"execute\":\"blockdev-add\",\"arguments\":{\"driver\":\"qcow2\",\"node-name\":\"x" + i + "\",\"file\":{\"driver\":\"blkdebug\"," +
                "\"config\":\"$D/" + cfg + "\",\"image\":{\"driver\":\"file\",\"filename\":\"$D/x" + i + ".qcow2\"}}}}"));
            steps.Add(E(Export($"e{i}", $"x{i}")));
        }

        for (int i = 0; i < n; i++)
        {
            steps.Add(E($"iok x{i} write -P {i + 1} 0 64k"));
        }

        for (int p = 0; p < n; p++)
        {
            var actions = Enumerable.Range(0, n).Select(i =>
                SyncAct($$"""{"node-name":"x{{i}}","snapshot-file":"$D/t{{p}}_{{i}}.qcow2","snapshot-node-name":"t{{p}}_{{i}}"}"""));
            differences[steps.Count] = (
                """{"error": {"class": "GenericError", "desc": "An IO error has occurred"}}""",
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Write to node 'x" + p + "' failed: " +
                (p == 3 ? "No space left on device" : "Input/output error") + "\"}}");
            steps.Add(E(Tx([.. actions])));
            left.AddRange(Enumerable.Range(0, p).Select(i => $"t{p}_{i}.qcow2"));
            steps.Add(E(Exports));
        }

        for (int i = 0; i < n; i++)
        {
            steps.Add(E($"io x{i} read -P {i + 1} 0 64k"));
        }

        steps.Add(E(FlatNodes));
        var ok = Enumerable.Range(0, n).Select(i => SyncAct($$"""{"node-name":"x{{i}}","snapshot-file":"$D/ok{{i}}.qcow2","snapshot-node-name":"ok{{i}}"}"""));
        steps.Add(E(Tx([.. ok])));
        for (int i = 0; i < n; i++)
        {
            steps.Add(E($"io x{i} write -P 0x55 64k 4k"));
            steps.Add(E($"io x{i} read -P {i + 1} 0 64k"));
        }

        steps.Add(E(Exports));
        return (new SnapshotScenario([.. steps], [.. left]), differences);
    }
}

/// <summary>blkdebug against qemu-storage-daemon's.</summary>
public sealed class BlkdebugDifferentialTests
{
    public static TheoryData<string> Names => new(SnapshotSuite.Blkdebug.Keys);

    [Theory]
    [MemberData(nameof(Names))]
    public Task Blkdebug_fails_the_same_requests_as_in_qemu_storage_daemon(string name) => SnapshotSuite.RunAsync(SnapshotSuite.Blkdebug[name]);

    [Fact]
    public Task A_failure_at_each_position_of_a_transaction_of_eight_leaves_every_disk_as_it_was()
    {
        var (scenario, differences) = SnapshotSuite.TransactionOfEightWithBlkdebug();
        return SnapshotSuite.RunAsync(scenario, differences);
    }
}
