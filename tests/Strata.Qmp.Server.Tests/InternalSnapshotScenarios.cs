namespace Strata.Qmp.Server.Tests;

/// <summary>
/// Internal snapshots of live nodes (blockdev-snapshot-internal-sync, blockdev-snapshot-delete-internal-sync and the
/// transaction action), differential against qemu-storage-daemon 7.2. Dates and VM clocks are normalised away
/// (<see cref="QmpScript.Normalise"/>); everything else, qemu-img snapshot -l and info included, must agree.
/// </summary>
public static partial class SnapshotSuite
{
    internal static string Int(string device, string name) =>
        "{\"execute\":\"blockdev-snapshot-internal-sync\",\"arguments\":{\"device\":\"" + device + "\",\"name\":\"" + name + "\"}}";

    internal static string IntAct(string device, string name) =>
        "{\"type\":\"blockdev-snapshot-internal-sync\",\"data\":{\"device\":\"" + device + "\",\"name\":\"" + name + "\"}}";

    internal static string Del(string data) => "{\"execute\":\"blockdev-snapshot-delete-internal-sync\",\"arguments\":" + data + "}";

    private const string AbortAct = """{"type":"abort","data":{}}""";

    private static void AddInternal(Dictionary<string, SnapshotScenario> s)
    {
        s["internal snapshots under NBD writes, deleted by id, by name and by both"] = Sc([
            E(Caps), E(NbdStart), E(Add("d1", "$D/c.qcow2")), E(Export("e1", "d1")),
            E("io d1 write -P 1 0 64k"),
            E(Int("d1", "s1")),
            E("io d1 write -P 2 0 64k"),
            E(Int("d1", "s2")),
            E("io d1 write -P 3 64k 64k"),
            E(Int("d1", "s3")),
            E(Int("d1", "s1")),
            E(Int("d1", "")),
            E(Int("e1", "x")),
            E("img snapshot -l -U c.qcow2"),
            E(Nodes), E(FlatNodes),
            E("io d1 read -P 2 0 64k"),
            E(Del("""{"device":"d1","id":"1"}""")),
            E(Del("""{"device":"d1","name":"s2"}""")),
            E(Del("""{"device":"d1","id":"3","name":"s1"}""")),
            E(Del("""{"device":"d1","id":"3","name":"s3"}""")),
            E(Del("""{"device":"d1","id":"1"}""")),
            E(Del("""{"device":"d1","name":"zz"}""")),
            E(Del("""{"device":"d1"}""")),
            E(Int("d1", "s1")),
            E(Int("d1", "s4")),
            E("io d1 write -P 4 0 4k"),
            E(Del("""{"device":"d1","name":"s1"}""")),
            E("io d1 read -P 4 0 4k"),
            E("io d1 read -P 3 64k 64k"),
            E("img snapshot -l -U c.qcow2"),
            .. Queries(),
        ]);

        s["internal snapshot checks on raw, file, read-only, backing and missing nodes"] = Sc([
            E("img snapshot -c pre c.qcow2"),
            E(Caps), E(NbdStart),
            E("""{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"r0","file":{"driver":"file","node-name":"rf","filename":"$D/r.raw"}}}"""),
            E(Add("ro", "$D/c.qcow2", ",\"read-only\":true")),
            E(Add("d0", "$D/b.qcow2")), E(Export("e0", "d0")),
            E(Sync("""{"node-name":"d0","snapshot-file":"$D/s1.qcow2","snapshot-node-name":"s1"}""")),
            E(Int("r0", "x")), E(Int("rf", "x")), E(Int("ro", "x")), E(Int("d0", "x")), E(Int("nope", "x")),
            E("""{"execute":"blockdev-snapshot-internal-sync","arguments":{"device":"s1","name":1}}"""),
            E("""{"execute":"blockdev-snapshot-internal-sync","arguments":{"device":"s1","name":"x","zz":1}}"""),
            E("""{"execute":"blockdev-snapshot-internal-sync","arguments":{"name":"x"}}"""),
            E(Int("s1", "x")),
            E("""{"execute":"transaction","arguments":{"actions":[""" + IntAct("s1", "g") + """],"properties":{"completion-mode":"grouped"}}}"""),
            E(Del("""{"device":"r0","id":"1"}""")), E(Del("""{"device":"rf","id":"1"}""")),
            E(Del("""{"device":"ro","name":"nothing"}""")),
            E(Del("""{"device":"d0","id":"1"}""")), E(Del("""{"device":"nope","id":"1"}""")),
            E(Del("""{"device":"s1","id":1}""")),
            E(Del("""{"id":"1"}""")),
            E("img snapshot -l -U s1.qcow2"),
            .. Queries(),
            // Last: qsd drops the entry from its table in memory before the write to the read-only file fails, so it
            // no longer lists it (the file keeps it); Strata refuses before touching anything, and lists it still.
            E(Del("""{"device":"ro","name":"pre"}""")),
            E("img snapshot -l -U c.qcow2"),
        ]);

        s["transaction of internal and external snapshots, all or nothing"] = Sc([
            E(Caps), E(NbdStart),
            E(Add("d1", "$D/c.qcow2")), E(Export("e1", "d1")),
            E(Add("d2", "$D/b.qcow2")), E(Export("e2", "d2")),
            E("io d1 write -P 1 0 64k"),
            E("io d2 write -P 2 1M 64k"),
            E(Tx(IntAct("d1", "t1"), IntAct("d2", "t2"),
                SyncAct("""{"node-name":"d1","snapshot-file":"$D/o1.qcow2","snapshot-node-name":"o1"}"""), AbortAct)),
            E("img snapshot -l -U c.qcow2"),
            E(Tx(IntAct("d1", "t1"), IntAct("d2", "t2"), IntAct("d1", "t1"))),
            E(Tx(IntAct("d2", "t2"), IntAct("d1", "t1"), IntAct("nope", "t3"))),
            E(Tx(IntAct("d1", "t1"), IntAct("d2", "t2"),
                SyncAct("""{"node-name":"d1","snapshot-file":"$D/o2.qcow2","snapshot-node-name":"o2"}"""))),
            E(Int("d1", "t3")),
            E(Int("o2", "t1")),
            E("io d1 write -P 3 0 4k"),
            E("io d1 read -P 1 4k 60k"),
            E("img snapshot -l -U c.qcow2"),
            E("img snapshot -l -U b.qcow2"),
            E("img snapshot -l -U o2.qcow2"),
            .. Queries(),
        ], "o1.qcow2"); // qsd leaves the overlay of the aborted transaction behind; Strata removes the file it created
    }
}
