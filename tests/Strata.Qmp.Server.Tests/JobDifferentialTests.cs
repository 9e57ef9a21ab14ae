using Xunit;

namespace Strata.Qmp.Server.Tests;

/// <summary>
/// blockdev-create and the job commands, differential against qemu-storage-daemon: the same replies and
/// JOB_STATUS_CHANGE events (a <c>#wait</c> step collects the events of a job that finishes after its command's
/// reply), and the images each daemon created compared byte for byte.
/// </summary>
public sealed class JobDifferentialTests
{
    private const string Caps = """{"execute":"qmp_capabilities"}""";

    private static Step E(string line) => new(line, Match.Exact);

    /// <summary>Waits for the job's "concluded" event (a job whose work runs after the reply).</summary>
    private static Step Concluded(string id) => new(Step.WaitPrefix + $"\"status\": \"concluded\", \"id\": \"{id}\"", Match.Exact);

    private static string Create(string id, string options) =>
        "{\"execute\":\"blockdev-create\",\"arguments\":{\"job-id\":\"" + id + "\",\"options\":" + options + "}}";

    private static Step CreateFile(string id, string file, string extra = "") =>
        E(Create(id, "{\"driver\":\"file\",\"filename\":\"$D/" + file + "\",\"size\":0" + extra + "}"));

    private static Step AddFile(string node, string file) =>
        E("{\"execute\":\"blockdev-add\",\"arguments\":{\"driver\":\"file\",\"node-name\":\"" + node + "\",\"filename\":\"$D/" + file + "\"}}");

    private static Step Dismiss(string id) => E("{\"execute\":\"job-dismiss\",\"arguments\":{\"id\":\"" + id + "\"}}");

    /// <summary>A fresh file, a node on it, then qcow2 formatted on it with <paramref name="options"/>: (steps, image name).</summary>
    private static IEnumerable<Step> Qcow2(string name, string options)
    {
        yield return CreateFile("f-" + name, name);
        yield return Concluded("f-" + name);
        yield return AddFile("n-" + name, name);
        yield return E(Create("q-" + name, "{\"driver\":\"qcow2\",\"file\":\"n-" + name + "\"," + options[1..]));
        yield return Concluded("q-" + name);
        yield return Dismiss("f-" + name);
        yield return Dismiss("q-" + name);
        yield return E("{\"execute\":\"blockdev-del\",\"arguments\":{\"node-name\":\"n-" + name + "\"}}");
    }

    private static readonly (string Name, string Options)[] Qcow2Images =
    [
        ("default", """{"size":67108864}"""),
        ("v2", """{"version":"v2","cluster-size":4096,"size":67108864}"""),
        ("small-clusters", """{"cluster-size":512,"refcount-bits":1,"size":1048576}"""),
        ("big-clusters", """{"cluster-size":2097152,"refcount-bits":64,"size":134217728}"""),
        ("lazy-zstd", """{"compression-type":"zstd","version":"v3","lazy-refcounts":true,"size":67108864}"""),
        ("extended-l2", """{"extended-l2":true,"cluster-size":32768,"size":67108864}"""),
        ("metadata", """{"preallocation":"metadata","size":33554432}"""),
        ("falloc", """{"preallocation":"falloc","cluster-size":65536,"size":4194304}"""),
        ("full", """{"preallocation":"full","size":4194304}"""),
        ("backing", """{"backing-file":"a.qcow2","backing-fmt":"qcow2","size":67108864}"""),
        ("backing-noformat", """{"backing-file":"/no/such/base","size":0}"""),
        ("backing-l2-prealloc", """{"backing-file":"a.qcow2","extended-l2":true,"preallocation":"metadata","size":4194304}"""),
        ("empty", """{"size":0}"""),
    ];

    private static readonly Dictionary<string, (Step[] Steps, string[] Files)> Script = new()
    {
        ["create file"] = (
        [
            E(Caps),
            E(Create("c0", """{"driver":"file","filename":"$D/f0","size":0}""")),
            Concluded("c0"),
            E("""{"execute":"query-jobs"}"""),
            E(Create("c1", """{"driver":"file","filename":"$D/f1","size":1048576,"preallocation":"off"}""")),
            Concluded("c1"),
            E(Create("c2", """{"driver":"file","filename":"$D/f2","size":1000000,"preallocation":"falloc"}""")),
            Concluded("c2"),
            E(Create("c3", """{"driver":"file","filename":"$D/f3","size":2097152,"preallocation":"full","nocow":true}""")),
            Concluded("c3"),
            E(Create("c4", """{"driver":"file","filename":"$D/f4","size":65536,"extent-size-hint":1048576}""")),
            Concluded("c4"),
            // Over an existing file: cut to nothing, then sized.
            E(Create("c5", """{"driver":"file","filename":"$D/r.raw","size":4096}""")),
            Concluded("c5"),
            E(Create("e1", """{"driver":"file","filename":"$D/f5","size":65536,"extent-size-hint":4294967296}""")),
            E(Create("e2", """{"driver":"file","filename":"$D/f6","size":65536,"preallocation":"metadata"}""")),
            Concluded("e2"),
            E(Create("e3", """{"driver":"file","filename":"$D/f7","size":-1}""")),
            Concluded("e3"),
            E(Create("e4", """{"driver":"file","filename":"$D/no/such/dir","size":0}""")),
            E(Create("e5", """{"driver":"file","filename":"$D/huge","size":9223372036854775807}""")),
            Concluded("e5"),
            E(Create("e6", """{"driver":"file","filename":"$D","size":0}""")),
            E("""{"execute":"query-jobs"}"""),
            Dismiss("c0"), Dismiss("c1"), Dismiss("c2"), Dismiss("c3"), Dismiss("c4"), Dismiss("c5"),
            Dismiss("e1"), Dismiss("e2"), Dismiss("e3"), Dismiss("e4"), Dismiss("e5"), Dismiss("e6"),
            E("""{"execute":"query-jobs"}"""),
        ], ["f0", "f1", "f2", "f3", "f4", "r.raw", "f5", "f6", "f7", "huge"]),

        ["create qcow2"] = (
        [
            E(Caps),
            .. Qcow2Images.SelectMany(i => Qcow2(i.Name, i.Options)),
            // Over a node whose file is larger than the image: QEMU writes over it and keeps the rest.
            AddFile("big", "r.raw"),
            E(Create("over", """{"driver":"qcow2","file":"big","size":1048576}""")),
            Concluded("over"),
            // Through a raw node on top of the file node.
            E("""{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"raw","file":"big"}}"""),
            E(Create("through", """{"driver":"qcow2","file":"raw","size":2097152,"cluster-size":4096}""")),
            Concluded("through"),
            E("""{"execute":"query-jobs"}"""),
        ], [.. Qcow2Images.Select(i => i.Name), "r.raw"]),

        ["create qcow2 errors"] = (
        [
            E(Caps),
            CreateFile("f", "t.qcow2"),
            Concluded("f"),
            AddFile("t", "t.qcow2"),
            E(Create("e1", """{"driver":"qcow2","file":"t","size":1000}""")),
            E(Create("e2", """{"driver":"qcow2","file":"t","size":1048576,"cluster-size":1000}""")),
            E(Create("e3", """{"driver":"qcow2","file":"t","size":1048576,"cluster-size":256}""")),
            E(Create("e4", """{"driver":"qcow2","file":"t","size":1048576,"cluster-size":4194304}""")),
            E(Create("e5", """{"driver":"qcow2","file":"t","size":1048576,"refcount-bits":3}""")),
            E(Create("e6", """{"driver":"qcow2","file":"t","size":1048576,"refcount-bits":128}""")),
            E(Create("e7", """{"driver":"qcow2","file":"t","size":1048576,"version":"v2","lazy-refcounts":true}""")),
            E(Create("e8", """{"driver":"qcow2","file":"t","size":1048576,"version":"v2","refcount-bits":8}""")),
            E(Create("e9", """{"driver":"qcow2","file":"t","size":1048576,"version":"v2","compression-type":"zstd"}""")),
            E(Create("e10", """{"driver":"qcow2","file":"t","size":1048576,"version":"v2","extended-l2":true}""")),
            E(Create("e11", """{"driver":"qcow2","file":"t","size":1048576,"extended-l2":true,"cluster-size":4096}""")),
            E(Create("e12", """{"driver":"qcow2","file":"t","size":1048576,"backing-fmt":"raw"}""")),
            E(Create("e13", """{"driver":"qcow2","file":"t","size":1048576,"backing-file":"x","preallocation":"falloc"}""")),
            E(Create("e14", """{"driver":"qcow2","file":"t","size":1048576,"data-file-raw":true}""")),
            E(Create("e15", """{"driver":"qcow2","file":"t","size":1048576,"data-file":"t","version":"v2"}""")),
            E(Create("e16", """{"driver":"qcow2","file":"t","size":1048576,"data-file":"nope"}""")),
            E(Create("e17", """{"driver":"qcow2","file":"nope","size":1048576}""")),
            E(Create("e18", """{"driver":"qcow2","file":"t","size":1048576,"encrypt":{"format":"luks","key-secret":"sec0"}}""")),
            Concluded("e18"),
            E(Create("e19", """{"driver":"qcow2","file":"t","size":1048576,"encrypt":{"format":"luks"}}""")),
            Concluded("e19"),
            E(Create("e20", """{"driver":"qcow2","file":"t","size":18446744073709551615}""")),
            // Sizes the image cannot grow to: the empty image is written, then the resize fails.
            E(Create("e28", """{"driver":"qcow2","file":"t","size":4611686018427387904}""")),
            Concluded("e28"),
            E(Create("e29", """{"driver":"qcow2","file":"t","size":9223372036854775808}""")),
            Concluded("e29"),
            E(Create("e30", """{"driver":"qcow2","file":"t","size":1099511627776,"cluster-size":512}""")),
            Concluded("e30"),
            E(Create("e31", """{"driver":"qcow2","file":"t","size":1048576,"refcount-bits":0}""")),
            E(Create("e32", """{"driver":"qcow2","file":"t","size":1048576,"refcount-bits":-16}""")),
            E(Create("e33", """{"driver":"qcow2","file":"t","size":1048576,"data-file-raw":true,"backing-file":"x"}""")),
            E(Create("e34", """{"driver":"qcow2","file":"t","size":1048576,"cluster-size":0}""")),
            E(Create("e21", """{"driver":"qcow2","file":"t","size":1048576,"encrypt":{"format":"aes"}}""")),
            E(Create("e22", """{"driver":"qcow2","file":"t","size":1048576,"backing-fmt":"nosuch"}""")),
            E(Create("e23", """{"driver":"qcow2","size":1048576}""")),
            E(Create("e24", """{"driver":"qcow2","file":"t","size":1048576,"version":"v4"}""")),
            E(Create("e25", """{"driver":"qcow2","file":"t","size":"1M"}""")),
            E(Create("e26", """{"driver":"qcow2","file":"t","size":1048576,"bogus":1}""")),
            E(Create("e27", """{"driver":"qcow2","file":1,"size":1048576}""")),
            E("""{"execute":"query-jobs"}"""),
        ], ["t.qcow2"]),

        ["nodes in use"] = (
        [
            E(Caps),
            CreateFile("f", "t.qcow2"),
            Concluded("f"),
            AddFile("t", "t.qcow2"),
            E(Create("q", """{"driver":"qcow2","file":"t","size":1048576}""")),
            Concluded("q"),
            // A format node on the file does not share write and resize: the create fails before any I/O.
            E("""{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"d","file":"t"}}"""),
            E(Create("q2", """{"driver":"qcow2","file":"t","size":1048576}""")),
            // ... but the format node itself can be written through.
            E(Create("q3", """{"driver":"qcow2","file":"d","size":2097152,"cluster-size":16384}""")),
            Concluded("q3"),
            // An export does not share resize.
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"$D/nbd.sock"}}}}"""),
            CreateFile("f2", "e.img", ",\"preallocation\":\"off\""),
            Concluded("f2"),
            AddFile("e", "e.img"),
            E("""{"execute":"block-export-add","arguments":{"type":"nbd","id":"x","node-name":"e","writable":true}}"""),
            E(Create("q4", """{"driver":"qcow2","file":"e","size":1048576}""")),
            // A file given inline is opened for the job only.
            E(Create("q5", """{"driver":"qcow2","file":{"driver":"file","filename":"$D/r.raw"},"size":4194304}""")),
            Concluded("q5"),
            E(Create("q6", """{"driver":"qcow2","file":{"driver":"file","filename":"$D/none"},"size":4194304}""")),
            Concluded("q6"),
            E("""{"execute":"query-jobs"}"""),
            E("""{"execute":"query-named-block-nodes","arguments":{"flat":true}}"""),
        ], ["t.qcow2", "e.img", "r.raw"]),

        ["job verbs"] = (
        [
            E(Caps),
            E("""{"execute":"query-jobs"}"""),
            E(Create("j", """{"driver":"file","filename":"$D/j","size":65536}""")),
            Concluded("j"),
            E(Create("j", """{"driver":"file","filename":"$D/j2","size":65536}""")),
            E("""{"execute":"job-pause","arguments":{"id":"j"}}"""),
            E("""{"execute":"job-resume","arguments":{"id":"j"}}"""),
            E("""{"execute":"job-cancel","arguments":{"id":"j"}}"""),
            E("""{"execute":"job-complete","arguments":{"id":"j"}}"""),
            E("""{"execute":"job-finalize","arguments":{"id":"j"}}"""),
            E("""{"execute":"query-jobs"}"""),
            Dismiss("j"),
            Dismiss("j"),
            E("""{"execute":"job-pause","arguments":{"id":"nope"}}"""),
            E("""{"execute":"job-resume","arguments":{"id":"nope"}}"""),
            E("""{"execute":"job-cancel","arguments":{"id":"nope"}}"""),
            E("""{"execute":"job-complete","arguments":{"id":"nope"}}"""),
            E("""{"execute":"job-finalize","arguments":{"id":"nope"}}"""),
            E("""{"execute":"job-pause","arguments":{}}"""),
            E("""{"execute":"job-dismiss","arguments":{"id":1}}"""),
            E("""{"execute":"job-cancel","arguments":{"id":"x","force":true}}"""),
            E(Create("1j", """{"driver":"file","filename":"$D/x","size":0}""")),
            E(Create("", """{"driver":"file","filename":"$D/x","size":0}""")),
            E(Create("r", """{"driver":"raw"}""")),
            E(Create("n", """{"driver":"null-co"}""")),
            E(Create("t", """{"driver":"throttle"}""")),
            E(Create("b", """{"driver":"bogus"}""")),
            E("""{"execute":"blockdev-create","arguments":{"options":{"driver":"raw"}}}"""),
            E("""{"execute":"blockdev-create","arguments":{"job-id":"x"}}"""),
            E(Create("x", """{"filename":"$D/x","size":0}""")),
            E(Create("x", """{"driver":"file","size":0}""")),
            E(Create("x", """{"driver":"file","filename":"$D/x","size":0,"preallocation":"lots"}""")),
            E(Create("x", """{"driver":"file","filename":"$D/x","size":0,"nocow":"yes"}""")),
            E("""{"execute":"query-jobs"}"""),
        ], ["j"]),
    };

    public static TheoryData<string> Scenarios => new(Script.Keys);

    [Theory]
    [MemberData(nameof(Scenarios))]
    public async Task Strata_runs_jobs_as_qemu_storage_daemon(string scenario)
    {
        var (steps, files) = Script[scenario];
        var qsd = QmpScript.RunAsync(Daemons.Qsd, steps, files);
        var strata = QmpScript.RunAsync(Daemons.Strata, steps, files);
        var expected = await qsd;
        var actual = await strata;

        var report = QmpDifferentialTests.Differences(steps, expected, actual);
        foreach (var name in files)
        {
            var e = expected.Files[name];
            var a = actual.Files[name];
            if (e is null || a is null)
            {
                if ((e is null) != (a is null))
                    report.AppendLine($"{name}: {(e is null ? "qsd" : "strata")} did not create it");
                continue;
            }

            if (!e.AsSpan().SequenceEqual(a))
            {
                int at = e.AsSpan().CommonPrefixLength(a);
                report.AppendLine($"{name}: images differ at byte {at} (qsd {e.Length} bytes, strata {a.Length} bytes)");
            }
        }

        Assert.True(report.Length == 0, report.ToString());
    }
}
