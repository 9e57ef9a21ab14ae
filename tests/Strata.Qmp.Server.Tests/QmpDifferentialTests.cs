using System.Text;
using Xunit;

namespace Strata.Qmp.Server.Tests;

/// <summary>
/// The differential QMP suite: each scenario's lines go to qemu-storage-daemon and to strata-daemon, and every answer
/// (events, then the reply) must agree after <see cref="QmpScript.Normalise"/>: exactly (messages, member order and
/// all) unless a step says <see cref="Match.Shape"/>, where the structure and the error class must still agree.
/// Each scenario runs in a directory holding a.qcow2 (64M), b.qcow2 (backed by a.qcow2) and r.raw (1M).
/// </summary>
public sealed class QmpDifferentialTests
{
    private const string Caps = """{"execute":"qmp_capabilities"}""";

    private static Step E(string line) => new(line, Match.Exact);

    private static Step S(string line, string why) => new(line, Match.Shape, why);

    public static TheoryData<string> Scenarios => new(Script.Keys);

    private static readonly Dictionary<string, Step[]> Script = new()
    {
        ["negotiation"] =
        [
            E("""{"execute":"query-version"}"""),
            E("""{"execute":"foo","id":1}"""),
            E("""{"exec-oob":"query-version"}"""),
            E("""{"execute":"qmp_capabilities","arguments":{"enable":["foo"]}}"""),
            E("""{"execute":"qmp_capabilities","arguments":{"enable":[1]}}"""),
            E("""{"execute":"qmp_capabilities","arguments":{"enable":"oob"}}"""),
            E("""{"execute":"qmp_capabilities","arguments":{"foo":1}}"""),
            E("""{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":"neg"}"""),
            E("""{"execute":"qmp_capabilities"}"""),
            E("""{"execute":"qmp_capabilities","arguments":{"foo":1}}"""),
            E("""{"exec-oob":"query-version","id":1}"""),
            E("""{"exec-oob":"foo","id":2}"""),
            E("""{"execute":"query-version","id":{"a":[1,2.5,"x",null,true]}}"""),
            E("""{"execute":"query-version","arguments":{"x":1}}"""),
            E("""{"execute":"query-commands","arguments":{"x":1}}"""),
            E("""{"execute":"quit","arguments":{"now":true}}"""),
        ],
        ["malformed input"] =
        [
            E(Caps),
            E("garbage"),
            E("[]"),
            E("42"),
            E("\"text\""),
            E("{}"),
            E("""{"id":6}"""),
            E("""{"execute":1,"id":7}"""),
            E("""{"execute":"query-version","foo":1,"id":3}"""),
            E("""{"execute":"query-version","arguments":[],"id":4}"""),
            E("""{"execute":"query-version","exec-oob":"query-version"}"""),
            E("""{"execute":"no-such-command","id":5}"""),
            E("}"),
            E("""{"execute":"query-block","id":"alive"}"""),
        ],
        ["argument checking"] =
        [
            E(Caps),
            E("""{"execute":"block_resize","arguments":{"size":"1"}}"""),
            E("""{"execute":"block_resize","arguments":{"size":1.5}}"""),
            E("""{"execute":"block_resize","arguments":{"size":18446744073709551615}}"""),
            E("""{"execute":"block_resize","arguments":{}}"""),
            E("""{"execute":"block_resize"}"""),
            E("""{"execute":"block_resize","arguments":{"size":1,"zz":1,"aa":2}}"""),
            E("""{"execute":"block_resize","arguments":{"size":1}}"""),
            E("""{"execute":"block_resize","arguments":{"node-name":"x","size":1}}"""),
            E("""{"execute":"block_resize","arguments":{"device":"x","size":1}}"""),
            E("""{"execute":"block_resize","arguments":{"device":"x","node-name":"y","size":1}}"""),
            E("""{"execute":"block-export-del","arguments":{"id":"x","mode":"foo"}}"""),
            E("""{"execute":"block-export-del","arguments":{"id":"x","mode":1}}"""),
            E("""{"execute":"block-export-del","arguments":{"id":"x"}}"""),
            E("""{"execute":"blockdev-del","arguments":{}}"""),
            E("""{"execute":"blockdev-del","arguments":{"node-name":1}}"""),
            E("""{"execute":"blockdev-del","arguments":{"node-name":"x"}}"""),
            E("""{"execute":"query-named-block-nodes","arguments":{"flat":"yes"}}"""),
            E("""{"execute":"query-blockstats","arguments":{"query-nodes":1}}"""),
            E("""{"execute":"nbd-server-start","arguments":{}}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{}}}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":"unix"}}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"bogus"}}}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix"}}}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{}}}}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":1}}}}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"x","zz":1}}}}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"x"},"zz":1}}}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"inet","data":{"host":"127.0.0.1","port":1}}}}"""),
            // inet addresses resolve with getaddrinfo, as QEMU's inet_listen_saddr (service names, its error wording).
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"inet","data":{"host":"127.0.0.1","port":"12x"}}}}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"inet","data":{"host":"127.0.0.1","port":"-1"}}}}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"inet","data":{"host":"127.0.0.1","port":"123456789012345678901234567890123456"}}}}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"inet","data":{"host":"127.0.0.1","port":"nbd","numeric":true}}}}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"inet","data":{"host":"127.0.0.1","port":"10809","ipv6":true}}}}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"inet","data":{"host":"","port":"10809","ipv4":false,"ipv6":false}}}}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"inet","data":{"host":"192.0.2.1","port":"10809"}}}}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"$D/n.sock"}},"max-connections":-1}}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"$D/n.sock"}},"max-connections":4294967296}}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"$D/n.sock"}},"max-connections":"x"}}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"$D/n.sock"}},"max-connections":4294967295}}"""),
            E("""{"execute":"nbd-server-stop"}"""),
            E("""{"execute":"nbd-server-add","arguments":{"device":"x","writable":1}}"""),
            E("""{"execute":"nbd-server-add","arguments":{"device":"x"}}"""),
            E("""{"execute":"nbd-server-remove","arguments":{"name":"x"}}"""),
            E("""{"execute":"nbd-server-stop"}"""),
            E("""{"execute":"block-export-add","arguments":{"id":"e","node-name":"x"}}"""),
            E("""{"execute":"block-export-add","arguments":{"type":"nbd","node-name":"x"}}"""),
            E("""{"execute":"block-export-add","arguments":{"type":"nbd","id":"e","node-name":"x","bogus":1}}"""),
            E("""{"execute":"block-export-add","arguments":{"type":"nbd","id":"e","node-name":"x","writable":"yes"}}"""),
            E("""{"execute":"block-export-add","arguments":{"type":"fuse","id":"e","node-name":"x"}}"""),
            E("""{"execute":"block-export-add","arguments":{"type":"nbd","id":"e","node-name":"x"}}"""),
            E("""{"execute":"query-block-exports","id":"x"}"""),
            E("""{"execute":"x-debug-query-block-graph"}"""),
        ],
        ["nodes"] =
        [
            E(Caps),
            E("""{"execute":"blockdev-add","arguments":{}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"null-co"}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"nosuch","node-name":"n"}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"null-co","node-name":"n","bogus":1}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"f","filename":"/nonexistent"}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"q","file":"nope"}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"null-co","node-name":"1bad"}}"""),
            // QEMU's visitor checks every member, nested options included, before the root's node-name.
            E("""{"execute":"blockdev-add","arguments":{"driver":"null-co","read-only":"on"}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"blkdebug","extra":1}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"qcow2","file":{"driver":"file","filename":1}}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"r","file":{"driver":"qcow2","file":{"driver":"file"}}}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"q","file":{"driver":"file","filename":"x","cache":{"direct":"yes"}}}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"blkdebug","node-name":"b","image":{"driver":"null-co","bogus":true}}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"q","file":"f","backing":5}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"f0","filename":"$D/b.qcow2"},"id":1}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"d0","file":"f0"},"id":2}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"d0","file":"f0"},"id":3}"""),
            E("""{"execute":"query-named-block-nodes"}"""),
            E("""{"execute":"query-named-block-nodes","arguments":{"flat":true}}"""),
            E("""{"execute":"query-block"}"""),
            E("""{"execute":"query-blockstats"}"""),
            E("""{"execute":"query-blockstats","arguments":{"query-nodes":true}}"""),
            E("""{"execute":"blockdev-del","arguments":{"node-name":"f0"}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"null-co","node-name":"n0"}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"r0","read-only":true,"file":{"driver":"file","filename":"$D/r.raw"}}}"""),
            E("""{"execute":"query-named-block-nodes","arguments":{"flat":true}}"""),
            E("""{"execute":"block_resize","arguments":{"node-name":"n0","size":2097152}}"""),
            E("""{"execute":"block_resize","arguments":{"node-name":"r0","size":2097152}}"""),
            E("""{"execute":"block_resize","arguments":{"node-name":"d0","size":-1}}"""),
            E("""{"execute":"block_resize","arguments":{"node-name":"d0","size":134217728}}"""),
            E("""{"execute":"query-named-block-nodes","arguments":{"flat":true}}"""),
            E("""{"execute":"blockdev-del","arguments":{"node-name":"n0"}}"""),
            E("""{"execute":"blockdev-del","arguments":{"node-name":"r0"}}"""),
            E("""{"execute":"blockdev-del","arguments":{"node-name":"d0"}}"""),
            E("""{"execute":"query-named-block-nodes"}"""),
            E("""{"execute":"blockdev-del","arguments":{"node-name":"f0"}}"""),
            E("""{"execute":"query-named-block-nodes"}"""),
            E("""{"execute":"blockdev-del","arguments":{"node-name":"f0"}}"""),
        ],
        ["exports"] =
        [
            E(Caps),
            E("""{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"d0","file":{"driver":"file","filename":"$D/b.qcow2"}}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"null-co","node-name":"n0"}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"r0","read-only":true,"file":{"driver":"file","filename":"$D/r.raw"}}}"""),
            E("""{"execute":"block-export-add","arguments":{"type":"nbd","id":"e0","node-name":"d0"}}"""),
            E("""{"execute":"block-export-add","arguments":{"type":"nbd","id":"e0","node-name":"nope"}}"""),
            E("""{"execute":"nbd-server-stop"}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"$D/nbd.sock"}}}}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"$D/nbd2.sock"}}}}"""),
            E("""{"execute":"block-export-add","arguments":{"type":"nbd","id":"e0","node-name":"d0","writable":true}}"""),
            E("""{"execute":"block-export-add","arguments":{"type":"nbd","id":"e0","node-name":"d0"}}"""),
            E("""{"execute":"block-export-add","arguments":{"type":"nbd","id":"e1","node-name":"d0"}}"""),
            E("""{"execute":"block-export-add","arguments":{"type":"nbd","id":"1x","node-name":"n0"}}"""),
            E("""{"execute":"block-export-add","arguments":{"type":"nbd","id":"er","node-name":"r0","writable":true}}"""),
            E("""{"execute":"block-export-add","arguments":{"type":"nbd","id":"e2","node-name":"n0","name":"null","description":"a null disk"}}"""),
            E("""{"execute":"query-block-exports"}"""),
            E("""{"execute":"x-debug-query-block-graph"}"""),
            E("""{"execute":"query-block"}"""),
            E("""{"execute":"query-blockstats"}"""),
            E("""{"execute":"blockdev-del","arguments":{"node-name":"d0"}}"""),
            E("""{"execute":"block_resize","arguments":{"node-name":"d0","size":134217728}}"""),
            E("""{"execute":"block-export-del","arguments":{"id":"e0"},"id":5}"""),
            E("""{"execute":"block-export-del","arguments":{"id":"e0"},"id":6}"""),
            E("""{"execute":"query-block-exports"}"""),
            E("""{"execute":"nbd-server-add","arguments":{"device":"d0","name":"x"}}"""),
            E("""{"execute":"nbd-server-add","arguments":{"device":"r0","writable":true}}"""),
            E("""{"execute":"query-block-exports"}"""),
            E("""{"execute":"nbd-server-remove","arguments":{"name":"x"},"id":7}"""),
            E("""{"execute":"nbd-server-remove","arguments":{"name":"x"},"id":8}"""),
            E("""{"execute":"nbd-server-stop","id":9}"""),
            E("""{"execute":"query-block-exports"}"""),
            E("""{"execute":"nbd-server-stop"}"""),
            E("""{"execute":"blockdev-del","arguments":{"node-name":"d0"}}"""),
            E("""{"execute":"query-named-block-nodes","arguments":{"flat":true}}"""),
        ],
        ["permissions"] =
        [
            // qcow2 over a named file, its backing opened from the header: the backing edge takes nothing until a reader comes.
            E(Caps),
            E("""{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"f0","filename":"$D/b.qcow2"}}"""),
            E("""{"execute":"x-debug-query-block-graph"}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"d0","file":"f0"}}"""),
            E("""{"execute":"x-debug-query-block-graph"}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"$D/nbd.sock"}}}}"""),
            E("""{"execute":"block-export-add","arguments":{"type":"nbd","id":"e0","node-name":"d0"}}"""),
            E("""{"execute":"x-debug-query-block-graph"}"""),
            E("""{"execute":"block-export-add","arguments":{"type":"nbd","id":"e1","node-name":"d0","name":"w","writable":true}}"""),
            E("""{"execute":"x-debug-query-block-graph"}"""),
            // Conflicts: a second format node on the same file, a resize under an export, a second open of the file.
            E("""{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"d1","file":"f0"}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"r1","file":"f0"}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"r2","read-only":true,"file":"f0"}}"""),
            E("""{"execute":"block_resize","arguments":{"node-name":"d0","size":134217728}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"d2","file":{"driver":"file","filename":"$D/b.qcow2"}}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"d3","read-only":true,"file":{"driver":"file","filename":"$D/b.qcow2"}}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"d4","read-only":true,"force-share":true,"file":{"driver":"file","filename":"$D/b.qcow2"}}}"""),
            E("""{"execute":"block-export-add","arguments":{"type":"nbd","id":"e4","node-name":"d4"}}"""),
            E("""{"execute":"x-debug-query-block-graph"}"""),
            E("""{"execute":"block-export-del","arguments":{"id":"e1"}}"""),
            E("""{"execute":"x-debug-query-block-graph"}"""),
            E("""{"execute":"block-export-del","arguments":{"id":"e0"}}"""),
            E("""{"execute":"blockdev-del","arguments":{"node-name":"d4"}}"""),
            E("""{"execute":"block-export-del","arguments":{"id":"e4"}}"""),
            E("""{"execute":"blockdev-del","arguments":{"node-name":"d4"}}"""),
            E("""{"execute":"blockdev-del","arguments":{"node-name":"r2"}}"""),
            E("""{"execute":"blockdev-del","arguments":{"node-name":"d0"}}"""),
            E("""{"execute":"x-debug-query-block-graph"}"""),
        ],
        ["backing permissions"] =
        [
            // Backing by node name (read-write and read-only), by file name inline, and a raw image: edges and exports.
            E(Caps),
            E("""{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"base","file":{"driver":"file","filename":"$D/a.qcow2"}}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"top","backing":"base","file":{"driver":"file","filename":"$D/b.qcow2"}}}"""),
            E("""{"execute":"x-debug-query-block-graph"}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"$D/nbd.sock"}}}}"""),
            E("""{"execute":"block-export-add","arguments":{"type":"nbd","id":"eb","node-name":"base","writable":true}}"""),
            E("""{"execute":"block-export-add","arguments":{"type":"nbd","id":"et","node-name":"top","writable":true}}"""),
            E("""{"execute":"x-debug-query-block-graph"}"""),
            E("""{"execute":"block_resize","arguments":{"node-name":"base","size":134217728}}"""),
            E("""{"execute":"block-export-del","arguments":{"id":"et"}}"""),
            E("""{"execute":"block-export-del","arguments":{"id":"eb"}}"""),
            E("""{"execute":"blockdev-del","arguments":{"node-name":"top"}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"top2","read-only":true,"backing":{"driver":"qcow2","file":{"driver":"file","filename":"$D/a.qcow2"}},"file":{"driver":"file","filename":"$D/b.qcow2"}}}"""),
            E("""{"execute":"blockdev-del","arguments":{"node-name":"base"}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"top2","read-only":true,"backing":{"driver":"qcow2","file":{"driver":"file","filename":"$D/a.qcow2"}},"file":{"driver":"file","filename":"$D/b.qcow2"}}}"""),
            E("""{"execute":"block-export-add","arguments":{"type":"nbd","id":"e2","node-name":"top2"}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"raw0","file":{"driver":"file","filename":"$D/r.raw"}}}"""),
            E("""{"execute":"block-export-add","arguments":{"type":"nbd","id":"er","node-name":"raw0","writable":true}}"""),
            E("""{"execute":"x-debug-query-block-graph"}"""),
            E("""{"execute":"block_resize","arguments":{"node-name":"raw0","size":2097152}}"""),
        ],
        ["quit"] =
        [
            E(Caps),
            E("""{"execute":"quit","id":"bye"}"""),
        ],
        // qsd closes its exports before quit's reply goes out: the step reads BLOCK_EXPORT_DELETED, then the reply.
        ["quit-with-exports"] =
        [
            E(Caps),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"$D/q.sock"}}}}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"r0","file":{"driver":"file","filename":"$D/r.raw"}}}"""),
            E("""{"execute":"block-export-add","arguments":{"type":"nbd","id":"e0","node-name":"r0","writable":true}}"""),
            E("""{"execute":"quit","id":"bye"}"""),
        ],
    };

    private static string FirstDifference(string e, string a)
    {
        var i = 0;
        while (i < e.Length && i < a.Length && e[i] == a[i])
        {
            i++;
        }

        var from = Math.Max(0, i - 80);
        return $"text differs at {i}: qsd …{e[from..Math.Min(e.Length, i + 80)]}… strata …{a[from..Math.Min(a.Length, i + 80)]}…";
    }

    [Fact]
    public void The_suite_has_at_least_60_exchanges() => Assert.True(Script.Values.Sum(s => s.Length) >= 60);

    [Theory]
    [MemberData(nameof(Scenarios))]
    public async Task Strata_answers_as_qemu_storage_daemon(string scenario)
    {
        var steps = Script[scenario];
        var qsd = QmpScript.RunAsync(Daemons.Qsd, steps);
        var strata = QmpScript.RunAsync(Daemons.Strata, steps);
        var expected = await qsd;
        var actual = await strata;

        var report = Differences(steps, expected, actual);
        Assert.True(report.Length == 0, report.ToString());
    }

    /// <summary>Where two transcripts of <paramref name="steps"/> disagree (empty when they agree).</summary>
    internal static StringBuilder Differences(Step[] steps, Transcript expected, Transcript actual)
    {
        var report = new StringBuilder();
        var greetingDiff = QmpScript.CompareShape(expected.Greeting, actual.Greeting);
        if (greetingDiff is not null || expected.Greeting != actual.Greeting)
        {
            report.AppendLine($"greeting:\n  qsd:    {expected.Greeting}\n  strata: {actual.Greeting}");
        }

        for (var i = 0; i < steps.Length; i++)
        {
            var e = expected.Answers[i];
            var a = actual.Answers[i];
            string? diff = null;
            if (e.Count != a.Count)
            {
                diff = $"{e.Count} vs {a.Count} messages";
            }
            else
            {
                for (var m = 0; m < e.Count && diff is null; m++)
                {
                    if (e[m].StartsWith('<') || a[m].StartsWith('<'))
                    {
                        diff = e[m] == a[m] ? null : "connection state differs";
                    }
                    else if (steps[i].Match == Match.Exact)
                    {
                        diff = e[m] == a[m] ? null : FirstDifference(e[m], a[m]);
                    }
                    else
                    {
                        diff = QmpScript.CompareShape(e[m], a[m]);
                    }
                }
            }

            if (diff is not null)
            {
                report.AppendLine($"step {i} {steps[i].Line}: {diff}");
                report.AppendLine("  qsd:    " + string.Join("\n          ", e));
                report.AppendLine("  strata: " + string.Join("\n          ", a));
            }
        }

        return report;
    }
}
