namespace Strata.Qmp.Server.Tests;

/// <summary>The scenarios: hand-written ones for each mode, argument and check, then generated transactions.</summary>
public static partial class SnapshotSuite
{
    private static SnapshotScenario Sc(IEnumerable<Step> steps, params string[] leftBehind) => new(steps.ToArray(), leftBehind);

    public static Dictionary<string, SnapshotScenario> HandWritten { get; } = BuildHandWritten();

    public static Dictionary<string, SnapshotScenario> Generated { get; } = BuildGenerated();

    private static Dictionary<string, SnapshotScenario> BuildHandWritten()
    {
        var s = new Dictionary<string, SnapshotScenario>
        {
            ["sync absolute-paths under NBD writes"] = Sc([
                .. Exported(),
                E("io d0 write -P 1 0 64k"),
                E(Sync("""{"node-name":"d0","snapshot-file":"$D/s1.qcow2","snapshot-node-name":"s1"}""")),
                E("io d0 write -P 2 64k 64k"),
                E("io d0 read -P 1 0 64k"),
                E("io d0 read -P 2 64k 64k"),
                E("io d0 read -P 0x11 128k 64k"),
                .. Queries(),
                E(Sync("""{"node-name":"s1","snapshot-file":"$D/s2.qcow2","snapshot-node-name":"s2","format":"qcow2","mode":"absolute-paths"}""")),
                E("io d0 write -P 3 0 4k"),
                E("io d0 read -P 3 0 4k"),
                E("io d0 read -P 1 4k 60k"),
                .. Queries(),
            ]),
            ["sync with a relative snapshot-file and a relatively opened node"] = Sc([
                E(Caps), E(NbdStart), E(Add("d1", "c.qcow2")), E(Export("e1", "d1")),
                E("io d1 write -P 5 1M 64k"),
                E(Sync("""{"node-name":"d1","snapshot-file":"s1.qcow2","snapshot-node-name":"s1"}""")),
                E("io d1 write -P 6 1M 4k"),
                E("io d1 read -P 5 1028k 60k"),
                .. Queries(),
            ]),
            ["sync by device and node-name"] = Sc([
                .. Exported(),
                E(Sync("""{"device":"d0","snapshot-file":"$D/s1.qcow2","snapshot-node-name":"s1"}""")),
                E(Sync("""{"device":"e0","snapshot-file":"$D/s1.qcow2"}""")),
                E(Sync("""{"device":"x","node-name":"d0","snapshot-file":"$D/s1.qcow2","snapshot-node-name":"s1"}""")),
                E(Sync("""{"snapshot-file":"$D/s2.qcow2","snapshot-node-name":"s2"}""")),
                .. Queries(),
            ]),
            ["sync of a node nobody uses"] = Sc([
                E(Caps), E(Add("d0", "$D/b.qcow2")),
                E(Sync("""{"node-name":"d0","snapshot-file":"$D/s1.qcow2","snapshot-node-name":"s1"}""")),
                E(FlatNodes), Graph(),
                E(Sync("""{"node-name":"d0","snapshot-file":"$D/s2.qcow2","snapshot-node-name":"s2"}""")),
                E(Nodes),
            ]),
            ["sync argument errors"] = Sc([
                .. Exported(),
                E(Sync("""{"node-name":"d0","snapshot-file":"$D/s1.qcow2"}""")),
                E(Sync("""{"node-name":"d0","snapshot-file":"$D/s1.qcow2","snapshot-node-name":"d0"}""")),
                E(Sync("""{"node-name":"d0","snapshot-file":"$D/s1.qcow2","snapshot-node-name":"1bad"}""")),
                E(Sync("""{"node-name":"nope","snapshot-file":"$D/s1.qcow2","snapshot-node-name":"s1"}""")),
                E(Sync("""{"node-name":"d0","snapshot-file":"$D/s1.qcow2","snapshot-node-name":"s1","format":"raw"}""")),
                E(Sync("""{"node-name":"d0","snapshot-file":"$D/s1.qcow2","snapshot-node-name":"s1","format":"bogus"}""")),
                E(Sync("""{"node-name":"d0","snapshot-file":"$D/s1.qcow2","snapshot-node-name":"s1","mode":"bogus"}""")),
                E(Sync("""{"node-name":"d0","snapshot-file":"$D/nodir/s1.qcow2","snapshot-node-name":"s1"}""")),
                E(Sync("""{"node-name":"d0","snapshot-node-name":"s1"}""")),
                E(Sync("""{"node-name":"d0","snapshot-file":1,"snapshot-node-name":"s1"}""")),
                E(Sync("""{"node-name":"d0","snapshot-file":"$D/s1.qcow2","snapshot-node-name":"s1","zz":1}""")),
                .. Queries(),
            ], "s1.qcow2"), // qsd creates the file before it checks the node name; Strata removes it again
            ["existing mode errors"] = Sc([
                .. Exported(),
                E(Sync("""{"node-name":"d0","snapshot-file":"$D/missing.qcow2","snapshot-node-name":"s1","mode":"existing"}""")),
                E(Sync("""{"node-name":"d0","snapshot-file":"$D/r.raw","snapshot-node-name":"s1","mode":"existing"}""")),
                E(Sync("""{"node-name":"d0","snapshot-file":"$D/r.raw","snapshot-node-name":"s1","mode":"existing","format":"raw"}""")),
                E(Sync("""{"node-name":"d0","snapshot-file":"$D/c.qcow2","snapshot-node-name":"s1","mode":"existing","format":"bogus"}""")),
                E(Sync("""{"node-name":"d0","snapshot-file":"$D/b.qcow2","snapshot-node-name":"s1","mode":"existing"}""")),
                E(Sync("""{"node-name":"d0","snapshot-file":"$D/b.qcow2","snapshot-node-name":"s1"}""")),
                .. Queries(),
            ]),
            ["existing mode with an overlay pre-created with the image's own name"] = Sc([
                .. Exported(),
                E("img create -q -f qcow2 -b $D/b.qcow2 -F qcow2 pre.qcow2"),
                E("io d0 write -P 7 2M 64k"),
                E(Sync("""{"node-name":"d0","snapshot-file":"pre.qcow2","snapshot-node-name":"s1","mode":"existing"}""")),
                E("io d0 write -P 8 2M 4k"),
                E("io d0 read -P 7 2052k 60k"),
                .. Queries(),
            ]),
            ["existing mode with a pre-created overlay whose backing is already set"] = Sc([
                .. Exported(),
                E("img create -q -f qcow2 -b $D/a.qcow2 -F qcow2 pre.qcow2"),
                E(Sync("""{"node-name":"d0","snapshot-file":"$D/pre.qcow2","snapshot-node-name":"s1","mode":"existing"}""")),
                E("io d0 write -P 9 0 4k"),
                E(Exports), Graph(),
            ]),
            ["read-only node"] = Sc([
                E(Caps), E(NbdStart), E(Add("d0", "$D/b.qcow2", ""","read-only":true""")), E(Export("e0", "d0", writable: false)),
                E(Sync("""{"node-name":"d0","snapshot-file":"$D/s1.qcow2","snapshot-node-name":"s1"}""")),
                E("io d0 read -P 0x11 0 64k"),
                E("io d0 write -P 1 0 64k"),
                .. Queries(),
            ]),
            ["blockdev-snapshot"] = Sc([
                .. Exported(),
                E("img create -q -f qcow2 ov.qcow2 4M"),
                E("img create -q -f qcow2 -b r.raw -F raw ob.qcow2 4M"),
                E(Add("ov", "$D/ov.qcow2", ""","backing":null""")),
                E(Add("ob", "$D/ob.qcow2")),
                E("""{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"r0","file":{"driver":"file","filename":"$D/r.raw"}}}"""),
                E("""{"execute":"blockdev-snapshot","arguments":{"node":"d0","overlay":"nope"}}"""),
                E("""{"execute":"blockdev-snapshot","arguments":{"node":"nope","overlay":"ov"}}"""),
                E("""{"execute":"blockdev-snapshot","arguments":{"node":"d0","overlay":"d0"}}"""),
                E("""{"execute":"blockdev-snapshot","arguments":{"node":"d0","overlay":"ob"}}"""),
                E("""{"execute":"blockdev-snapshot","arguments":{"node":"d0","overlay":"r0"}}"""),
                E("""{"execute":"blockdev-snapshot","arguments":{"node":"d0"}}"""),
                E("io d0 write -P 1 0 64k"),
                E("""{"execute":"blockdev-snapshot","arguments":{"node":"d0","overlay":"ov"}}"""),
                E("io d0 write -P 2 4k 4k"),
                E("io d0 read -P 1 0 4k"),
                E("io d0 read -P 2 4k 4k"),
                E("""{"execute":"blockdev-snapshot","arguments":{"node":"d0","overlay":"ov"}}"""),
                .. Queries(),
                E("""{"execute":"blockdev-del","arguments":{"node-name":"ov"}}"""),
                E("""{"execute":"blockdev-del","arguments":{"node-name":"d0"}}"""),
            ]),
            ["blockdev-snapshot of an overlay in use"] = Sc([
                .. Exported(),
                E("img create -q -f qcow2 ov.qcow2 4M"),
                E(Add("ov", "$D/ov.qcow2", ""","backing":null""")),
                E(Export("e1", "ov", writable: false)),
                E("""{"execute":"blockdev-snapshot","arguments":{"node":"d0","overlay":"ov"}}"""),
                E(Exports),
            ]),
            ["transaction arguments and properties"] = Sc([
                .. Exported(),
                E(Tx()),
                E(Tx("""{"type":"abort","data":{}}""")),
                E(Tx("""{"type":"abort"}""")),
                E(Tx("""{"type":"bogus","data":{}}""")),
                E(Tx("""{"data":{}}""")),
                E("""{"execute":"transaction","arguments":{"actions":{}}}"""),
                E("""{"execute":"transaction","arguments":{}}"""),
                E("""{"execute":"transaction","arguments":{"actions":[{"type":"abort","data":{}}],"properties":{"completion-mode":"grouped"}}}"""),
                E("""{"execute":"transaction","arguments":{"actions":[],"properties":{"completion-mode":"grouped"}}}"""),
                E("""{"execute":"transaction","arguments":{"actions":[],"properties":{"completion-mode":"bogus"}}}"""),
                E("""{"execute":"transaction","arguments":{"actions":[{"type":"blockdev-snapshot-sync","data":{"node-name":"d0","snapshot-file":"$D/x.qcow2","snapshot-node-name":"x"}}],"properties":{"completion-mode":"grouped"}}}"""),
                E("""{"execute":"transaction","arguments":{"actions":[{"type":"blockdev-snapshot-sync","data":{"node-name":"d0","snapshot-file":"$D/x.qcow2","snapshot-node-name":"x"}}],"properties":{"completion-mode":"individual"}}}"""),
                E(Tx(SyncAct("""{"node-name":"d0","snapshot-file":"$D/y.qcow2"}"""))),
                .. Queries(),
            ]),
            ["transaction rolled back by abort, busy node and duplicate names"] = Sc([
                E(Caps), E(NbdStart), E(Add("d0", "$D/b.qcow2")), E(Export("e0", "d0")), E(Add("d1", "$D/c.qcow2")), E(Export("e1", "d1")),
                E("io d0 write -P 1 0 64k"),
                E(Tx(SyncAct("""{"node-name":"d0","snapshot-file":"$D/t1.qcow2","snapshot-node-name":"t1"}"""), """{"type":"abort","data":{}}""")),
                E("io d0 write -P 2 0 4k"),
                E(Tx(SyncAct("""{"node-name":"d0","snapshot-file":"$D/t2.qcow2","snapshot-node-name":"t2"}"""),
                    SyncAct("""{"node-name":"d1","snapshot-file":"$D/t3.qcow2","snapshot-node-name":"t2"}"""))),
                E(Tx(SyncAct("""{"node-name":"d0","snapshot-file":"$D/t4.qcow2","snapshot-node-name":"t4"}"""),
                    SyncAct("""{"node-name":"d0","snapshot-file":"$D/t5.qcow2","snapshot-node-name":"t5"}"""))),
                E(Tx(SyncAct("""{"node-name":"d1","snapshot-file":"$D/t6.qcow2","snapshot-node-name":"t6"}"""),
                    SyncAct("""{"node-name":"d0","snapshot-file":"$D/t6.qcow2","snapshot-node-name":"t7"}"""))),
                E("io d0 read -P 2 0 4k"),
                E("io d0 read -P 1 4k 60k"),
                E("io d1 write -P 3 0 4k"),
                .. Queries(),
            ], "t1.qcow2", "t2.qcow2", "t4.qcow2", "t6.qcow2"),
            ["transaction of snapshot-sync and blockdev-snapshot together"] = Sc([
                E(Caps), E(NbdStart), E(Add("d0", "$D/b.qcow2")), E(Export("e0", "d0")), E(Add("d1", "$D/c.qcow2")), E(Export("e1", "d1")),
                E("img create -q -f qcow2 ov.qcow2 4M"),
                E(Add("ov", "$D/ov.qcow2", ""","backing":null""")),
                E("io d0 write -P 1 0 64k"), E("io d1 write -P 2 0 64k"),
                E(Tx(SyncAct("""{"node-name":"d0","snapshot-file":"$D/s0.qcow2","snapshot-node-name":"s0"}"""),
                    """{"type":"blockdev-snapshot","data":{"node":"d1","overlay":"ov"}}""")),
                E("io d0 write -P 3 0 4k"), E("io d1 write -P 4 0 4k"),
                E("io d0 read -P 1 4k 60k"), E("io d1 read -P 2 4k 60k"),
                .. Queries(),
            ]),
            ["blockdev-snapshot rolled back when a later action fails"] = Sc([
                .. Exported(),
                E("img create -q -f qcow2 ov.qcow2 4M"),
                E(Add("ov", "$D/ov.qcow2", ""","backing":null""")),
                E(Tx("""{"type":"blockdev-snapshot","data":{"node":"d0","overlay":"ov"}}""", """{"type":"abort","data":{}}""")),
                E("io d0 write -P 1 0 4k"),
                .. Queries(),
                E("""{"execute":"blockdev-snapshot","arguments":{"node":"d0","overlay":"ov"}}"""),
                E(Exports),
            ]),
            ["chain of snapshots with writes between"] = Sc([
                .. Exported(),
                E("io d0 write -P 1 0 1M"),
                E(Sync("""{"node-name":"d0","snapshot-file":"$D/s1.qcow2","snapshot-node-name":"s1"}""")),
                E("io d0 write -P 2 256k 256k"),
                E(Sync("""{"node-name":"s1","snapshot-file":"$D/s2.qcow2","snapshot-node-name":"s2"}""")),
                E("io d0 write -P 3 512k 256k"),
                E(Tx(SyncAct("""{"node-name":"s2","snapshot-file":"$D/s3.qcow2","snapshot-node-name":"s3"}"""))),
                E("io d0 write -z 768k 256k"),
                E("io d0 read -P 1 0 256k"), E("io d0 read -P 2 256k 256k"), E("io d0 read -P 3 512k 256k"), E("io d0 read -P 0 768k 256k"),
                E(Sync("""{"node-name":"s1","snapshot-file":"$D/s4.qcow2","snapshot-node-name":"s4"}""")),
                .. Queries(),
            ]),
        };

        s["existing mode with a relative pre-created overlay in a subdirectory, then a snapshot of it"] = Sc([
            .. Exported(),
            E("mkdir sub"),
            E("img create -q -f qcow2 -b ../b.qcow2 -F qcow2 sub/pre.qcow2"),
            E("io d0 write -P 4 0 64k"),
            E(Sync("""{"node-name":"d0","snapshot-file":"sub/pre.qcow2","snapshot-node-name":"s1","mode":"existing"}""")),
            E("io d0 write -P 5 4k 4k"),
            .. Queries(),
            E(Sync("""{"node-name":"s1","snapshot-file":"$D/s2.qcow2","snapshot-node-name":"s2"}""")),
            E("io d0 write -P 6 8k 4k"),
            E("io d0 read -P 4 0 4k"), E("io d0 read -P 5 4k 4k"), E("io d0 read -P 6 8k 4k"),
            .. Queries(),
        ]);
        s["sync of a raw node"] = Sc([
            E(Caps), E(NbdStart),
            E("""{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"r0","file":{"driver":"file","filename":"$D/r.raw"}}}"""),
            E(Export("e0", "r0")),
            E("io r0 write -P 1 0 512k"),
            E(Sync("""{"node-name":"r0","snapshot-file":"$D/s1.qcow2","snapshot-node-name":"s1"}""")),
            E("io r0 write -P 2 0 4k"),
            E("io r0 read -P 1 4k 508k"),
            .. Queries(),
        ]);
        s["blockdev-snapshot of an overlay opened with backing null over a header that names one"] = Sc([
            E(Caps), E(NbdStart), E(Add("d1", "$D/c.qcow2")), E(Export("e1", "d1")),
            E("img create -q -f qcow2 -b a.qcow2 -F qcow2 ov.qcow2"),
            E(Add("ov", "$D/ov.qcow2", ""","backing":null""")),
            E(FlatNodes),
            E("""{"execute":"blockdev-snapshot","arguments":{"node":"d1","overlay":"ov"}}"""),
            E("io d1 write -P 1 0 4k"),
            .. Queries(),
        ]);
        s["deleting nodes and exports after a snapshot"] = Sc([
            .. Exported(),
            E(Sync("""{"node-name":"d0","snapshot-file":"$D/s1.qcow2","snapshot-node-name":"s1"}""")),
            E("""{"execute":"blockdev-del","arguments":{"node-name":"s1"}}"""),
            E("""{"execute":"blockdev-del","arguments":{"node-name":"d0"}}"""),
            E("""{"execute":"block-export-del","arguments":{"id":"e0"}}"""),
            E(FlatNodes),
            E("""{"execute":"blockdev-del","arguments":{"node-name":"s1"}}"""),
            E("""{"execute":"blockdev-del","arguments":{"node-name":"d0"}}"""),
            E(FlatNodes),
        ]);
        AddInternal(s);
        return s;
    }

    private static Dictionary<string, SnapshotScenario> BuildGenerated()
    {
        var s = new Dictionary<string, SnapshotScenario>();
        // Transactions of n actions, each snapshotting its own exported disk, failing at every position in turn; then
        // the same transaction without the fault. qsd leaves the overlays of the actions before the fault.
        (string Kind, Func<int, int, string?> Bad, bool LeavesFiles)[] faults =
        [
            ("missing node", (p, i) => SyncAct($$"""{"node-name":"nope","snapshot-file":"$D/t{{p}}_{{i}}.qcow2","snapshot-node-name":"t{{p}}_{{i}}"}"""), true),
            ("abort action", (_, _) => """{"type":"abort","data":{}}""", true),
            ("missing existing file", (p, i) => SyncAct($$"""{"node-name":"x{{i}}","snapshot-file":"$D/missing.qcow2","snapshot-node-name":"t{{p}}_{{i}}","mode":"existing"}"""), true),
            ("overlay name in use", (p, i) => SyncAct($$"""{"node-name":"x{{i}}","snapshot-file":"$D/t{{p}}_{{i}}.qcow2","snapshot-node-name":"x0"}"""), true),
            ("unknown format", (p, i) => SyncAct($$"""{"node-name":"x{{i}}","snapshot-file":"$D/t{{p}}_{{i}}.qcow2","snapshot-node-name":"t{{p}}_{{i}}","format":"bogus"}"""), true),
            ("busy node", (p, i) => p == 0 ? """{"type":"abort","data":{}}""" : SyncAct($$"""{"node-name":"x0","snapshot-file":"$D/t{{p}}_{{i}}.qcow2","snapshot-node-name":"t{{p}}_{{i}}"}"""), true),
        ];
        foreach (int n in new[] { 1, 2, 4 })
        {
            foreach (var f in faults)
            {
                if (f.Kind == "busy node" && n == 1)
                {
                    continue;
                }

                s[$"transaction of {n} failing at each position: {f.Kind}"] = Transactions(n, f.Bad);
            }
        }

        s["transaction of 8 failing at each position: abort action"] = Transactions(8, faults[1].Bad);
        s["transaction of 8 failing at each position: busy node"] = Transactions(8, faults[5].Bad);
        s["transaction of 16 failing at each position: missing existing file"] = Transactions(16, faults[2].Bad);
        s["transaction of 32 failing at each position: missing node"] = Transactions(32, faults[0].Bad);
        return s;
    }

    private static SnapshotScenario Transactions(int n, Func<int, int, string?> bad)
    {
        var steps = new List<Step> { E(Caps), E(NbdStart) };
        var left = new List<string>();
        for (int i = 0; i < n; i++)
        {
            steps.Add(E($"img create -q -f qcow2 x{i}.qcow2 1M"));
            steps.Add(E(Add($"x{i}", $"$D/x{i}.qcow2")));
            steps.Add(E(Export($"e{i}", $"x{i}")));
        }

        steps.Add(E("io x0 write -P 1 0 64k"));
        for (int p = 0; p < n; p++)
        {
            var actions = new List<string>();
            for (int i = 0; i < n; i++)
            {
                string? fault = i == p ? bad(p, i) : null;
                actions.Add(fault ?? SyncAct($$"""{"node-name":"x{{i}}","snapshot-file":"$D/t{{p}}_{{i}}.qcow2","snapshot-node-name":"t{{p}}_{{i}}"}"""));
                if (i < p || (fault is null && i == p))
                {
                    left.Add($"t{p}_{i}.qcow2");
                }
            }

            steps.Add(E(Tx([.. actions])));
            if (bad(p, p) is null)
            {
                // No fault at this position: the transaction succeeded and its overlays are in use on both sides.
                left.RemoveAll(l => l.StartsWith($"t{p}_", StringComparison.Ordinal));
            }
        }

        steps.Add(E("io x0 read -P 1 0 64k"));
        steps.Add(E(Exports));
        var ok = Enumerable.Range(0, n).Select(i => SyncAct($$"""{"node-name":"x{{i}}","snapshot-file":"$D/ok{{i}}.qcow2","snapshot-node-name":"ok{{i}}"}"""));
        steps.Add(E(Tx([.. ok])));
        steps.Add(E($"io x{n - 1} write -P 2 0 4k"));
        steps.Add(E("io x0 read -P 1 4k 60k"));
        steps.Add(E(Exports));
        steps.Add(E(FlatNodes));
        return new SnapshotScenario([.. steps], [.. left]);
    }
}
