using System.Diagnostics;
using System.Text;
using Xunit;

namespace Strata.Qmp.Server.Tests;

/// <summary>
/// Live dirty bitmaps, differential against qemu-storage-daemon 7.2: the block-dirty-bitmap-* commands and transaction
/// actions, x-debug-block-dirty-bitmap-sha256, query-named-block-nodes, the qemu:dirty-bitmap:NAME meta context read
/// with nbdinfo --map, and the bitmaps each daemon leaves in its files. Every scenario runs on both daemons (see
/// <see cref="SnapshotSuite"/>); every answer must agree, every shell step must succeed on both, and the files must
/// have the same qemu-img info (bitmap directory included) and contents, and check clean.
/// </summary>
public static class BitmapSuite
{
    private const string Caps = """{"execute":"qmp_capabilities"}""";
    private const string NbdStart = """{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"$D/nbd.sock"}}}}""";
    private const string Nodes = """{"execute":"query-named-block-nodes","arguments":{"flat":true}}""";
    private const string Exports = """{"execute":"query-block-exports"}""";

    private static Step E(string line) => SnapshotSuite.E(line);

    private static string Qcow2(string node, string file, string fileNode = "", string extra = "") =>
        "{\"execute\":\"blockdev-add\",\"arguments\":{\"driver\":\"qcow2\",\"node-name\":\"" + node + "\"" + extra +
        ",\"file\":{\"driver\":\"file\"" + (fileNode.Length > 0 ? ",\"node-name\":\"" + fileNode + "\"" : "") + ",\"filename\":\"$D/" + file + "\"}}}";

    private static string Cmd(string command, string args) => "{\"execute\":\"" + command + "\",\"arguments\":" + args + "}";

    private static string Add(string node, string name, string extra = "") =>
        Cmd("block-dirty-bitmap-add", "{\"node\":\"" + node + "\",\"name\":\"" + name + "\"" + extra + "}");

    private static string Bm(string command, string node, string name) =>
        Cmd("block-dirty-bitmap-" + command, "{\"node\":\"" + node + "\",\"name\":\"" + name + "\"}");

    private static string Sha(string node, string name) => Cmd("x-debug-block-dirty-bitmap-sha256", "{\"node\":\"" + node + "\",\"name\":\"" + name + "\"}");

    private static string Merge(string node, string target, string bitmaps) =>
        Cmd("block-dirty-bitmap-merge", "{\"node\":\"" + node + "\",\"target\":\"" + target + "\",\"bitmaps\":" + bitmaps + "}");

    private static string Export(string id, string node, string name, bool writable, string bitmaps) =>
        Cmd("block-export-add", "{\"type\":\"nbd\",\"id\":\"" + id + "\",\"node-name\":\"" + node + "\",\"name\":\"" + name +
            "\",\"writable\":" + (writable ? "true" : "false") + ",\"bitmaps\":" + bitmaps + "}");

    /// <summary>nbdinfo --map of a bitmap's context, human and JSON.</summary>
    private static IEnumerable<Step> Map(string export, string bitmap) =>
    [
        E($"sh nbdinfo --map=qemu:dirty-bitmap:{bitmap} 'nbd+unix:///{export}?socket=nbd.sock'"),
        E($"sh nbdinfo --json --map=qemu:dirty-bitmap:{bitmap} 'nbd+unix:///{export}?socket=nbd.sock'"),
        // QEMU's own NBD client asks in its own pieces and reports dirty areas as holes (x-dirty-bitmap).
        E($"sh qemu-img map --output=json --image-opts driver=nbd,export={export},server.type=unix,server.path=nbd.sock,x-dirty-bitmap=qemu:dirty-bitmap:{bitmap}"),
    ];

    private static string Act(string type, string data) => "{\"type\":\"" + type + "\",\"data\":" + data + "}";

    private static string BmData(string node, string name, string extra = "") => "{\"node\":\"" + node + "\",\"name\":\"" + name + "\"" + extra + "}";

    private static string Tx(params string[] actions) => "{\"execute\":\"transaction\",\"arguments\":{\"actions\":[" + string.Join(",", actions) + "]}}";

    /// <summary>A qcow2 file left with its bitmaps marked in use (qsd killed while it had them open): they load inconsistent.</summary>
    private const string LeaveInUse =
        "sh qemu-img bitmap --add c.qcow2 ib && qemu-img bitmap --add --disable c.qcow2 ok && " +
        "{ qemu-storage-daemon --blockdev driver=qcow2,node-name=x,file.driver=file,file.filename=c.qcow2 --pidfile k.pid & P=$!; " +
        "while [ ! -s k.pid ]; do sleep 0.05; done; kill -9 $P; wait $P 2>/dev/null; rm -f k.pid; } && qemu-img info --output=json c.qcow2";

    public static Dictionary<string, SnapshotScenario> Scenarios { get; } = new()
    {
        ["commands: arguments, checks and messages on qcow2, raw, file, null-co, v2 and read-only nodes"] = new([
            E("sh qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 4M && qemu-img bitmap --add a.qcow2 rb && qemu-img bitmap --add --disable a.qcow2 rd"),
            E(Caps),
            E(Qcow2("d0", "c.qcow2", "f0")),
            E("""{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"r0","file":{"driver":"file","node-name":"rf","filename":"$D/r.raw"}}}"""),
            E(Qcow2("v2", "v2.qcow2")),
            E(Qcow2("ro", "a.qcow2", extra: ",\"read-only\":true")),
            E("""{"execute":"blockdev-add","arguments":{"driver":"null-co","node-name":"n0"}}"""),
            E(Add("d0", "b1")), E(Add("d0", "b1")), E(Add("d0", "b1", ",\"persistent\":true")), E(Add("d0", "")), E(Add("zz", "x")),
            E(Add("d0", "g", ",\"granularity\":1000")), E(Add("d0", "g", ",\"granularity\":256")), E(Add("d0", "g", ",\"granularity\":-1")),
            E(Add("d0", "g", ",\"granularity\":4294967296")), E(Add("d0", "g", ",\"granularity\":\"4k\"")),
            E(Add("d0", "g", ",\"granularity\":2147483648")), E(Add("d0", "g2", ",\"granularity\":2147483648,\"persistent\":true")),
            E(Add("d0", "p1", ",\"persistent\":true,\"disabled\":true")), E(Add("d0", "p3", ",\"persistent\":true,\"granularity\":512")),
            E(Add("d0", new string('n', 1024))), E(Add("d0", new string('n', 1024), ",\"persistent\":true")), E(Add("d0", new string('m', 1023))),
            E(Cmd("block-dirty-bitmap-add", """{"node":"d0"}""")), E(Cmd("block-dirty-bitmap-add", """{"node":"d0","name":"q","x":1}""")),
            E(Add("r0", "x", ",\"persistent\":true")), E(Add("rf", "x", ",\"persistent\":true")), E(Add("v2", "x", ",\"persistent\":true")),
            E(Add("n0", "x", ",\"persistent\":true")), E(Add("ro", "x", ",\"persistent\":true")),
            E(Add("r0", "x")), E(Add("rf", "x")), E(Add("n0", "x")), E(Add("f0", "x")), E(Add("n0", "y", ",\"granularity\":512")),
            E(Add("v2", "x")), E(Add("ro", "x", ",\"disabled\":true")),
            E(Nodes),
            E(Sha("d0", "b1")), E(Sha("n0", "x")), E(Sha("n0", "y")), E(Sha("n0", "zz")), E(Sha("zz", "zz")),
            E(Merge("d0", "b1", """["p1",{"node":"r0","name":"x"}]""")), E(Merge("d0", "b1", """["p1",{"node":"f0","name":"x"}]""")),
            E(Merge("d0", "b1", """["nope"]""")), E(Merge("d0", "nope", """["p1"]""")), E(Merge("zz", "b1", """["p1"]""")),
            E(Merge("d0", "b1", """[{"node":"zz","name":"x"}]""")), E(Merge("d0", "b1", """["p1","g","b1",{"node":"d0","name":"p3"}]""")),
            E(Merge("d0", "b1", """[{"node":"d0"}]""")), E(Merge("ro", "x", """["x"]""")), E(Merge("v2", "x", """[{"node":"ro","name":"x"}]""")),
            E(Bm("remove", "d0", "nope")), E(Bm("remove", "zz", "nope")), E(Bm("remove", "d0", "p1")), E(Bm("remove", "ro", "x")),
            E(Bm("clear", "d0", "b1")), E(Bm("clear", "d0", "nope")), E(Bm("clear", "ro", "x")),
            E(Bm("enable", "d0", "b1")), E(Bm("disable", "d0", "b1")), E(Bm("disable", "d0", "b1")), E(Bm("enable", "ro", "x")),
            E(Bm("enable", "zz", "b1")), E(Bm("disable", "d0", "zz")),
            E(Bm("clear", "ro", "rb")), E(Bm("disable", "ro", "rb")), E(Bm("enable", "ro", "rd")), E(Merge("ro", "rb", """["rd"]""")),
            E(Merge("ro", "x", """["rb","rd"]""")), E(Sha("ro", "rb")), E(Bm("remove", "ro", "rd")), E(Add("ro", "rb")),
            E(Nodes),
        ], []),

        ["guest writes over NBD: counts, sha256 and nbdinfo --map as qsd's"] = new([
            E(Caps), E(NbdStart),
            E(Qcow2("d0", "c.qcow2", extra: ",\"discard\":\"unmap\"")),
            E(Qcow2("d1", "a.qcow2")),
            E(Add("d0", "g512", ",\"granularity\":512")), E(Add("d0", "g4k", ",\"granularity\":4096")), E(Add("d0", "def")),
            E(Add("d0", "off", ",\"disabled\":true")), E(Add("d0", "p", ",\"persistent\":true,\"granularity\":131072")),
            E(Add("d1", "nodiscard", ",\"granularity\":4096")),
            E(Export("e0", "d0", "d0", true, """["g512","g4k","def","off","p"]""")),
            E(Export("e1", "d1", "d1", true, """["nodiscard"]""")),
            E("io d0 write -P 1 1000 3000"), E("io d0 write -P 2 1M 64k"), E("io d0 write -z 2M 4k"), E("io d0 discard 3M 64k"),
            E("io d0 write -P 3 4190208 4096"),
            E("io d1 write -P 4 0 512"), E("io d1 discard 2M 128k"), E("io d1 write -z 3M 8k"),
            .. Map("d0", "g512"), .. Map("d0", "g4k"), .. Map("d0", "def"), .. Map("d0", "off"), .. Map("d0", "p"), .. Map("d1", "nodiscard"),
            E(Sha("d0", "g512")), E(Sha("d0", "g4k")), E(Sha("d0", "def")), E(Sha("d0", "off")), E(Sha("d0", "p")), E(Sha("d1", "nodiscard")),
            E(Nodes),
            E(Exports),
            E(Cmd("block-export-del", """{"id":"e0"}""")),
            E(Bm("clear", "d0", "g4k")), E(Bm("disable", "d0", "def")), E(Bm("enable", "d0", "off")),
            E(Export("e0", "d0", "d0", true, """["g512","g4k","def","off","p"]""")),
            E("io d0 write -P 5 5000 100"), E("io d0 write -P 6 1536k 1k"),
            .. Map("d0", "g4k"), .. Map("d0", "def"), .. Map("d0", "off"),
            E(Cmd("block-export-del", """{"id":"e0"}""")),
            E(Cmd("block_resize", """{"node-name":"d0","size":8388608}""")),
            E(Sha("d0", "g512")), E(Sha("d0", "p")),
            E(Cmd("block_resize", """{"node-name":"d0","size":2097152}""")),
            E(Merge("d0", "p", """["g512",{"node":"d0","name":"off"}]""")),
            E(Merge("d0", "g512", """["p"]""")),
            E(Sha("d0", "g512")), E(Sha("d0", "g4k")), E(Sha("d0", "def")), E(Sha("d0", "off")), E(Sha("d0", "p")),
            E(Nodes),
        ], []),

        ["bitmaps on the file node under a qcow2 node: they see the format node's writes, metadata included, and grow with the file"] = new([
            E(Caps), E(NbdStart),
            E(Qcow2("d0", "c.qcow2", "f0")),
            E(Add("f0", "fb")), E(Add("f0", "f4k", ",\"granularity\":4096")), E(Add("f0", "fd", ",\"disabled\":true")),
            E(Add("d0", "db")),
            E(Nodes),
            E(Export("e0", "d0", "d0", true, """["db"]""")),
            E("io d0 write -P 1 0 64k"), E("io d0 write -P 2 3M 8k"), E("io d0 write -z 2M 64k"), E("io d0 write -P 3 1M 1"),
            E(Sha("f0", "fb")), E(Sha("f0", "f4k")), E(Sha("f0", "fd")), E(Sha("d0", "db")),
            E(Nodes),
            E(Cmd("block-export-del", """{"id":"e0"}""")),
            E(Bm("clear", "f0", "fb")), E(Bm("enable", "f0", "fd")),
            E(Cmd("block_resize", """{"node-name":"d0","size":8388608}""")),
            E(Sha("f0", "fb")), E(Sha("f0", "f4k")), E(Sha("f0", "fd")),
            E(Cmd("block_resize", """{"node-name":"f0","size":4194304}""")),
            E(Sha("f0", "fb")), E(Sha("f0", "fd")),
            E(Nodes),
        ], []),

        ["exports of bitmaps: lookup down the backing chain, busy while exported, read-only refusals"] = new([
            E(Caps), E(NbdStart),
            E(Qcow2("base", "a.qcow2", extra: ",\"read-only\":true")),
            E("""{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"top","backing":"base","file":{"driver":"file","filename":"$D/b.qcow2"}}}"""),
            E(Qcow2("d0", "c.qcow2", "f0")),
            E(Add("base", "bk")), E(Add("top", "t", ",\"granularity\":4096")), E(Add("top", "td", ",\"disabled\":true")),
            E(Add("d0", "b1", ",\"granularity\":512")), E(Add("d0", "p1", ",\"persistent\":true,\"disabled\":true")),
            E(Add("d0", "p2", ",\"persistent\":true")), E(Add("f0", "fb", ",\"disabled\":true")), E(Add("d0", "dd", ",\"disabled\":true")),
            E(Add("base", "bk2", ",\"disabled\":true")),
            E(Export("x1", "d0", "x1", false, """["p2"]""")),
            E(Export("x2", "d0", "x2", false, """["zz"]""")),
            E(Export("x2", "d0", "x2", false, """[{"node":"d0","name":"zz"}]""")),
            E(Export("x2", "d0", "x2", false, """[{"node":"zz","name":"zz"}]""")),
            E(Export("x2", "d0", "x2", false, """["fb"]""")),
            E(Export("x3", "top", "x3", false, """["bk","td"]""")),
            E(Export("x4", "top", "x4", false, """["t"]""")),
            E(Export("x4", "top", "x4", true, """["t"]""")),
            E(Export("x5", "d0", "x5", true, """["b1","p1"]""")),
            E(Export("x6", "d0", "x6", false, """["dd","dd"]""")),
            E(Export("x7", "d0", "x7", false, """["p1","p1"]""")),
            E(Export("x7", "d0", "x7", false, """[{"node":"d0","name":"p2"}]""")),
            E(Cmd("nbd-server-add", """{"device":"d0","name":"y1","bitmap":"b1"}""")),
            E(Cmd("nbd-server-add", """{"device":"top","name":"y1","bitmap":"nope"}""")),
            E(Cmd("nbd-server-add", """{"device":"top","name":"y1","bitmap":"bk"}""")),
            E(Cmd("nbd-server-add", """{"device":"top","name":"y1","bitmap":"bk2"}""")),
            E("io x4 write -P 7 0 4k"), E("io x4 write -P 7 12k 1k"), E("io x5 write -P 8 64k 1"), E("io x5 write -P 8 1000000 100000"),
            .. Map("x3", "bk"), .. Map("x4", "t"), .. Map("x5", "b1"), .. Map("x5", "p1"), .. Map("x6", "dd"), .. Map("x7", "p2"), .. Map("y1", "bk2"),
            E("sh nbdinfo --list 'nbd+unix:///?socket=nbd.sock'"),
            E(Nodes),
            E(Bm("remove", "d0", "b1")), E(Bm("clear", "d0", "b1")), E(Bm("enable", "d0", "b1")), E(Bm("disable", "d0", "p2")),
            E(Merge("d0", "b1", """["p2"]""")), E(Merge("d0", "p2", """["b1"]""")), E(Merge("d0", "p1", """["p2"]""")),
            E(Sha("d0", "b1")), E(Sha("d0", "p2")),
            E(Cmd("block-export-del", """{"id":"x5"}""")),
            E(Cmd("nbd-server-remove", """{"name":"y1"}""")),
            E(Bm("remove", "d0", "b1")), E(Bm("remove", "d0", "p1")), E(Bm("remove", "top", "t")),
            E(Nodes), E(Exports),
        ], []),

        ["inconsistent bitmaps of a file left in use"] = new([
            E(LeaveInUse),
            E(Caps), E(NbdStart),
            E(Qcow2("i0", "c.qcow2")),
            E(Nodes),
            E(Bm("clear", "i0", "ib")), E(Bm("enable", "i0", "ib")), E(Bm("disable", "i0", "ok")),
            E(Cmd("block_resize", """{"node-name":"i0","size":8388608}""")),
            E(Merge("i0", "ok", """["ib"]""")), E(Merge("i0", "ib", """["ok"]""")),
            E(Add("i0", "n")), E(Merge("i0", "n", """["ok"]""")),
            E(Export("e0", "i0", "i0", true, """["ib"]""")),
            E(Export("e0", "i0", "i0", true, """["n"]""")),
            E("io i0 write -P 9 0 64k"),
            .. Map("i0", "n"),
            E(Tx(Act("block-dirty-bitmap-clear", BmData("i0", "ok")))),
            E(Tx(Act("block-dirty-bitmap-remove", BmData("i0", "ib")), Act("block-dirty-bitmap-enable", BmData("i0", "ok")))),
            E(Bm("remove", "i0", "ib")),
            E("sh qemu-img info -U --output=json c.qcow2"),
            E(Add("i0", "ib", ",\"persistent\":true")),
            E(Nodes),
        ], []),

        ["transactions of bitmap actions: abort restores, a failing action rolls back, grouped is refused"] = new([
            E(Caps), E(NbdStart),
            E(Qcow2("d0", "c.qcow2")),
            E(Add("d0", "a", ",\"granularity\":4096")), E(Add("d0", "p", ",\"persistent\":true")), E(Add("d0", "q", ",\"disabled\":true")),
            E(Export("e0", "d0", "d0", true, "[]")),
            E("io d0 write -P 1 0 8k"), E("io d0 write -P 2 100k 1k"),
            E(Sha("d0", "a")), E(Sha("d0", "p")),
            E(Tx(Act("block-dirty-bitmap-clear", BmData("d0", "a")), Act("block-dirty-bitmap-add", BmData("d0", "t1", ",\"persistent\":true")),
                Act("block-dirty-bitmap-disable", BmData("d0", "a")), Act("block-dirty-bitmap-enable", BmData("d0", "q")),
                Act("block-dirty-bitmap-merge", """{"node":"d0","target":"p","bitmaps":["a"]}"""),
                Act("block-dirty-bitmap-remove", BmData("d0", "p")), """{"type":"abort","data":{}}""")),
            E(Sha("d0", "a")), E(Sha("d0", "p")), E(Nodes),
            E("sh qemu-img info -U --output=json c.qcow2"),
            E(Tx(Act("block-dirty-bitmap-merge", """{"node":"d0","target":"q","bitmaps":["a"]}"""), Act("block-dirty-bitmap-add", BmData("d0", "t1")),
                Act("block-dirty-bitmap-remove", BmData("d0", "t1")), Act("block-dirty-bitmap-add", BmData("d0", "t1")),
                Act("block-dirty-bitmap-clear", BmData("d0", "a")), Act("block-dirty-bitmap-disable", BmData("d0", "a")),
                Act("block-dirty-bitmap-enable", BmData("d0", "zz")))),
            E(Nodes), E(Sha("d0", "q")),
            E(Tx(Act("block-dirty-bitmap-merge", """{"node":"d0","target":"q","bitmaps":["a"]}"""),
                Act("block-dirty-bitmap-add", BmData("d0", "t1", ",\"granularity\":512")),
                Act("block-dirty-bitmap-clear", BmData("d0", "a")), Act("block-dirty-bitmap-disable", BmData("d0", "a")),
                Act("block-dirty-bitmap-enable", BmData("d0", "q")))),
            E(Nodes), E(Sha("d0", "q")), E(Sha("d0", "a")),
            E("io d0 write -P 3 1M 4k"),
            E(Nodes),
            E(Tx(Act("block-dirty-bitmap-remove", BmData("d0", "p")), Act("block-dirty-bitmap-remove", BmData("d0", "p")))),
            E(Tx(Act("block-dirty-bitmap-remove", BmData("d0", "t1")), Act("block-dirty-bitmap-add", BmData("d0", "t1")))),
            E("""{"execute":"transaction","arguments":{"actions":[{"type":"block-dirty-bitmap-clear","data":{"node":"d0","name":"a"}}],"properties":{"completion-mode":"grouped"}}}"""),
            E("""{"execute":"transaction","arguments":{"actions":[{"type":"block-dirty-bitmap-add","data":{"node":"d0","name":"g"}}],"properties":{"completion-mode":"grouped"}}}"""),
            E(Tx(Act("block-dirty-bitmap-add", BmData("d0", "x", ",\"granularity\":100")))),
            E(Tx(Act("block-dirty-bitmap-remove", BmData("d0", "p")), Act("block-dirty-bitmap-merge", """{"node":"d0","target":"a","bitmaps":["p"]}"""))),
            E(Tx(Act("block-dirty-bitmap-remove", BmData("d0", "p")))),
            E("sh qemu-img info -U --output=json c.qcow2"),
            E(Nodes),
        ], []),

        ["persistent bitmaps stored at blockdev-del and quit, loaded again"] = new([
            E(Caps), E(NbdStart),
            E(Qcow2("d0", "c.qcow2")),
            E(Add("d0", "p1", ",\"persistent\":true")), E(Add("d0", "p2", ",\"persistent\":true,\"granularity\":512,\"disabled\":true")),
            E(Add("d0", "tmp", ",\"granularity\":4096")),
            E(Export("e0", "d0", "d0", true, "[]")),
            E("io d0 write -P 1 0 8k"), E("io d0 write -P 2 3M 100k"),
            E(Bm("enable", "d0", "p2")),
            E("io d0 write -P 3 1M 1"),
            E(Sha("d0", "p1")), E(Sha("d0", "p2")),
            E(Cmd("block-export-del", """{"id":"e0"}""")),
            E(Cmd("blockdev-del", """{"node-name":"d0"}""")),
            E("sh qemu-img info --output=json c.qcow2 && qemu-img check -q c.qcow2"),
            E(Qcow2("d0", "c.qcow2")),
            E(Nodes),
            E(Sha("d0", "p1")), E(Sha("d0", "p2")),
            E(Export("e0", "d0", "d0", true, """["p1","p2"]""")),
            E("io d0 write -P 4 2M 64k"),
            .. Map("d0", "p1"), .. Map("d0", "p2"),
            E(Cmd("block-export-del", """{"id":"e0"}""")),
            E(Bm("remove", "d0", "p1")),
            E("sh qemu-img info -U --output=json c.qcow2"),
            E(Sha("d0", "p2")),
        ], []),
    };

    /// <summary>Runs one scenario on both daemons; differences, and shell or qemu-io steps that failed, fail the test.</summary>
    public static async Task RunAsync(SnapshotScenario scenario)
    {
        QemuTools.RequireTools("qemu-img", "qemu-io", "qemu-storage-daemon", "nbdinfo");
        var starting = new[] { ScriptedDaemon.StartAsync(Daemons.Qsd), ScriptedDaemon.StartAsync(Daemons.Strata) };
        await Task.WhenAll(starting.Select(t => t.ContinueWith(_ => { }, TaskScheduler.Default)));
        await using var qsd = await starting[0];
        await using var strata = await starting[1];

        async Task<List<IReadOnlyList<string>>> RunAll(ScriptedDaemon d)
        {
            var answers = new List<IReadOnlyList<string>>();
            foreach (var step in scenario.Steps)
                answers.Add(await d.StepAsync(step.Line));
            await d.QuitAsync();
            return answers;
        }

        var runs = await Task.WhenAll(Task.Run(() => RunAll(qsd)), Task.Run(() => RunAll(strata)));
        var report = new StringBuilder();
        for (int i = 0; i < scenario.Steps.Length; i++)
        {
            bool tool = scenario.Steps[i].Line.StartsWith("sh ", StringComparison.Ordinal) || scenario.Steps[i].Line.StartsWith("io ", StringComparison.Ordinal);
            if (tool && !runs[0][i][0].StartsWith("exit 0", StringComparison.Ordinal))
                report.AppendLine($"step {i} {scenario.Steps[i].Line} failed on qsd: {runs[0][i][0]}");
        }
        SnapshotSuite.CompareAnswers(scenario.Steps, runs[0], runs[1], report);
        SnapshotSuite.CompareFiles(scenario, qsd, strata, report);
        Assert.True(report.Length == 0, report.ToString());
    }
}

public sealed class BitmapDifferentialTests
{
    public static TheoryData<string> Names => new(BitmapSuite.Scenarios.Keys);

    [Theory]
    [MemberData(nameof(Names))]
    public Task Dirty_bitmaps_behave_as_in_qemu_storage_daemon(string name) => BitmapSuite.RunAsync(BitmapSuite.Scenarios[name]);
}

/// <summary>
/// Persistent bitmaps across daemons: what strata-daemon stores at quit, qemu-storage-daemon loads with the same bits
/// (sha256 and nbdinfo --map), and the other way round; every file checks clean.
/// </summary>
public sealed class BitmapPersistenceTests
{
    private static readonly string[] Open =
    [
        """{"execute":"qmp_capabilities"}""",
        """{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"$D/nbd.sock"}}}}""",
        """{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"d0","file":{"driver":"file","filename":"$D/c.qcow2"}}}""",
    ];

    private const string Export = """{"execute":"block-export-add","arguments":{"type":"nbd","id":"e0","node-name":"d0","writable":true,"bitmaps":["p","q"]}}""";
    private const string ShaP = """{"execute":"x-debug-block-dirty-bitmap-sha256","arguments":{"node":"d0","name":"p"}}""";
    private const string ShaQ = """{"execute":"x-debug-block-dirty-bitmap-sha256","arguments":{"node":"d0","name":"q"}}""";
    private const string MapP = "sh nbdinfo --map=qemu:dirty-bitmap:p 'nbd+unix:///d0?socket=nbd.sock'";
    private const string MapQ = "sh nbdinfo --map=qemu:dirty-bitmap:q 'nbd+unix:///d0?socket=nbd.sock'";

    private static async Task<string> Step(ScriptedDaemon d, string line)
    {
        var messages = await d.StepAsync(line);
        var answer = messages[^1]; // after any events
        Assert.True(answer.StartsWith("exit 0", StringComparison.Ordinal) || answer.StartsWith("{\"return\"", StringComparison.Ordinal),
            $"{line}: {string.Join("\n", messages)}");
        return answer;
    }

    private static async Task<string[]> Bits(ScriptedDaemon d) =>
        [await Step(d, ShaP), await Step(d, ShaQ), await Step(d, MapP), await Step(d, MapQ)];

    private static void Check(ScriptedDaemon d)
    {
        var r = QemuTools.RunIn(d.Directory, "qemu-img", "check", "c.qcow2");
        Assert.True(r.ExitCode == 0, $"qemu-img check: {r.StdOut}{r.StdErr}");
    }

    [Fact]
    public async Task Bitmaps_stored_by_one_daemon_load_with_the_same_bits_in_the_other()
    {
        QemuTools.RequireTools("qemu-img", "qemu-io", "qemu-storage-daemon", "nbdinfo");

        // strata-daemon writes two persistent bitmaps (one of them disabled part of the time) and quits.
        await using var first = await ScriptedDaemon.StartAsync(Daemons.Strata);
        foreach (var line in Open)
            await Step(first, line);
        await Step(first, """{"execute":"block-dirty-bitmap-add","arguments":{"node":"d0","name":"p","persistent":true}}""");
        await Step(first, """{"execute":"block-dirty-bitmap-add","arguments":{"node":"d0","name":"q","persistent":true,"granularity":512}}""");
        await Step(first, Export);
        await Step(first, "io d0 write -P 1 1000 5000");
        await Step(first, "io d0 write -z 2M 64k");
        await Step(first, """{"execute":"block-export-del","arguments":{"id":"e0"}}""");
        await Step(first, """{"execute":"block-dirty-bitmap-disable","arguments":{"node":"d0","name":"q"}}""");
        await Step(first, Export);
        await Step(first, "io d0 write -P 2 3M 100k");
        var written = await Bits(first);
        Assert.Contains("dirty", written[2], StringComparison.Ordinal);
        await first.QuitAsync();
        Check(first);

        // qemu-storage-daemon loads them: same bits; it writes more and quits.
        await using var second = await ScriptedDaemon.StartAsync(Daemons.Qsd);
        File.Copy(Path.Combine(first.Directory, "c.qcow2"), Path.Combine(second.Directory, "c.qcow2"), overwrite: true);
        foreach (var line in Open)
            await Step(second, line);
        await Step(second, Export);
        Assert.Equal(written, await Bits(second));
        await Step(second, "io d0 write -P 3 1M 4k");
        await Step(second, """{"execute":"block-export-del","arguments":{"id":"e0"}}""");
        await Step(second, """{"execute":"block-dirty-bitmap-enable","arguments":{"node":"d0","name":"q"}}""");
        await Step(second, """{"execute":"block-export-add","arguments":{"type":"nbd","id":"e0","node-name":"d0","writable":true,"bitmaps":["p","q"]}}""");
        await Step(second, "io d0 write -P 4 1536k 1k");
        var rewritten = await Bits(second);
        Assert.NotEqual(written, rewritten);
        await second.QuitAsync();
        Check(second);

        // strata-daemon loads qsd's file: same bits again.
        await using var third = await ScriptedDaemon.StartAsync(Daemons.Strata);
        File.Copy(Path.Combine(second.Directory, "c.qcow2"), Path.Combine(third.Directory, "c.qcow2"), overwrite: true);
        foreach (var line in Open)
            await Step(third, line);
        await Step(third, Export);
        Assert.Equal(rewritten, await Bits(third));
        await third.QuitAsync();
        Check(third);
    }
}

/// <summary>--export's bitmaps on the command line (keyval lists: bitmaps.0=NAME, bitmaps.1.node=N,bitmaps.1.name=B), against qsd.</summary>
public sealed class BitmapCommandLineTests
{
    [Theory]
    [InlineData("read-only=on", "bitmaps.0=b,bitmaps.1.node=d0,bitmaps.1.name=b2", false)]
    [InlineData("read-only=off", "bitmaps.0=b", false)]
    [InlineData("read-only=off", "bitmaps.0.node=d0,bitmaps.0.name=b,bitmaps.1=zz", false)]
    [InlineData("read-only=off", "bitmaps=b", false)]
    [InlineData("read-only=on", "bitmaps.0=b,bitmaps.1=b,bitmaps.2.node=d0,bitmaps.2.name=b", false)]
    [InlineData("read-only=off", "bitmaps.0=b2", true)]
    [InlineData("read-only=on", "bitmaps.0=b2", true)]
    public async Task Export_bitmaps_from_the_command_line_as_in_qsd(string node, string bitmaps, bool leftInUse)
    {
        QemuTools.RequireTools("qemu-img", "qemu-io", "qemu-storage-daemon", "nbdinfo");
        using var dir = new TempDir("bitmap-cli");
        string image = dir.Combine("c.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", image, "4M").EnsureSuccess();
        QemuTools.QemuImg("bitmap", "--add", "-g", "4096", image, "b").EnsureSuccess();
        QemuTools.QemuImg("bitmap", "--add", "--disable", image, "b2").EnsureSuccess();
        QemuTools.QemuIo("-c", "write -P 1 1M 6k", "-c", "write -P 2 3000 10", image).EnsureSuccess(); // recorded by b
        if (leftInUse)
        {
            // qsd exits on a bad --export without storing its bitmaps: they stay marked in use, and load inconsistent.
            var r = QemuTools.Run("qemu-storage-daemon", "--blockdev", $"driver=qcow2,node-name=d0,file.driver=file,file.filename={image}",
                "--export", "type=nbd,id=e0,node-name=d0,bitmaps.0=zz");
            Assert.True(r.ExitCode == 1, r.ToString());
            Assert.Contains("in-use", QemuTools.QemuImg("info", image).StdOut, StringComparison.Ordinal);
        }

        var outcomes = new List<string>();
        foreach (bool strata in new[] { false, true })
        {
            // Each daemon gets its own copy: qsd exits on a bad --export leaving the bitmaps marked in use.
            string copy = dir.Combine(strata ? "s.qcow2" : "q.qcow2");
            File.Copy(image, copy);
            string sock = dir.Combine(strata ? "s.sock" : "q.sock");
            string pid = dir.Combine(strata ? "s.pid" : "q.pid");
            string[] args =
            [
                "--blockdev", $"driver=qcow2,node-name=d0,{node},file.driver=file,file.filename={copy}",
                "--nbd-server", $"addr.type=unix,addr.path={sock}",
                "--export", $"type=nbd,id=e0,node-name=d0,{bitmaps}",
                "--pidfile", pid, // last: written once every export is up
            ];
            var psi = new ProcessStartInfo(strata ? "dotnet" : "qemu-storage-daemon") { WorkingDirectory = dir.Path };
            foreach (var a in (string[])(strata ? [Daemons.StrataDll, "--log-level", "warning", .. args] : args))
                psi.ArgumentList.Add(a);
            await using var daemon = new BackgroundProcess(psi, strata ? "strata-daemon" : "qemu-storage-daemon");
            var sw = Stopwatch.StartNew();
            while (!File.Exists(pid) && !daemon.HasExited && sw.Elapsed < TimeSpan.FromSeconds(30))
                await Task.Delay(50);
            if (daemon.HasExited)
            {
                await daemon.WaitForExitAsync(); // output drained
                // The message after the program's name, and the exit code.
                var err = daemon.StandardError.Trim().Replace(copy, "IMAGE", StringComparison.Ordinal);
                outcomes.Add($"exit {daemon.ExitCode}: {err[(err.IndexOf(':', StringComparison.Ordinal) + 1)..]}");
                continue;
            }

            var text = new StringBuilder();
            foreach (var ctx in new[] { "qemu:dirty-bitmap:b", "qemu:dirty-bitmap:b2" })
            {
                var map = QemuTools.Run("nbdinfo", $"--map={ctx}", $"nbd+unix:///d0?socket={sock}");
                text.AppendLine($"{ctx}: exit {map.ExitCode}: {map.StdOut}{map.StdErr}");
            }
            var list = QemuTools.Run("nbdinfo", "--list", $"nbd+unix:///?socket={sock}");
            text.AppendLine(list.StdOut.Replace(sock, "SOCK", StringComparison.Ordinal));
            outcomes.Add(text.ToString());
            await daemon.SignalAndWaitAsync("TERM");
        }
        Assert.Equal(outcomes[0], outcomes[1]);
        Assert.DoesNotContain("exit 0: nbdinfo", outcomes[0], StringComparison.Ordinal);
    }
}
