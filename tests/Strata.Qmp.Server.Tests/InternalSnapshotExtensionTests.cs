using System.Text.Json;
using Xunit;

namespace Strata.Qmp.Server.Tests;

/// <summary>
/// Strata's extension of blockdev-snapshot-internal-sync: without "name" (which qemu-storage-daemon requires), a
/// unique time-based name (as strata-img snapshot -C gives) is generated and returned; with one, the reply is QEMU's.
/// </summary>
public sealed class InternalSnapshotExtensionTests
{
    private const string NoName = """{"execute":"blockdev-snapshot-internal-sync","arguments":{"device":"d1"}}""";

    [Fact]
    public async Task A_snapshot_without_a_name_gets_a_unique_generated_one()
    {
        await using var qsd = await ScriptedDaemon.StartAsync(Daemons.Qsd);
        await using var strata = await ScriptedDaemon.StartAsync(Daemons.Strata);
        const string add = """{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"d1","file":{"driver":"file","filename":"c.qcow2"}}}""";
        foreach (var d in new[] { qsd, strata })
        {
            Assert.Equal("{\"return\": {}}", Assert.Single(await d.StepAsync("""{"execute":"qmp_capabilities"}""")));
            Assert.Equal("{\"return\": {}}", Assert.Single(await d.StepAsync(add)));
        }

        // QEMU's own answer to a missing name, for the record: the extension is Strata's alone.
        Assert.Equal("{\"error\": {\"class\": \"GenericError\", \"desc\": \"Parameter 'name' is missing\"}}", Assert.Single(await qsd.StepAsync(NoName)));
        await qsd.QuitAsync();

        long before = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var names = new List<string>();
        for (int i = 0; i < 3; i++)
        {
            using var doc = JsonDocument.Parse(Assert.Single(await strata.StepAsync(NoName)));
            var ret = doc.RootElement.GetProperty("return");
            Assert.Single(ret.EnumerateObject());
            names.Add(ret.GetProperty("name").GetString()!);
        }

        // Name-less transaction actions too (the transaction's reply stays {}); a given name still replies {}.
        Assert.Equal("{\"return\": {}}", Assert.Single(await strata.StepAsync(
            """{"execute":"transaction","arguments":{"actions":[{"type":"blockdev-snapshot-internal-sync","data":{"device":"d1"}},{"type":"blockdev-snapshot-internal-sync","data":{"device":"d1"}}]}}""")));
        Assert.Equal("{\"return\": {}}", Assert.Single(await strata.StepAsync(SnapshotSuite.Int("d1", "given"))));
        Assert.Contains("Parameter 'device' is missing", Assert.Single(await strata.StepAsync(
            """{"execute":"blockdev-snapshot-internal-sync","arguments":{}}""")), StringComparison.Ordinal);
        await strata.QuitAsync();
        long after = DateTimeOffset.UtcNow.ToUnixTimeSeconds();

        var info = QemuTools.RunIn(strata.Directory, "qemu-img", "info", "--output=json", "c.qcow2");
        Assert.Equal(0, info.ExitCode);
        using var json = JsonDocument.Parse(info.StdOut);
        var table = json.RootElement.GetProperty("snapshots").EnumerateArray().ToList();
        Assert.Equal(6, table.Count);
        var stored = table.Select(t => t.GetProperty("name").GetString()!).ToList();
        Assert.Equal(6, stored.Distinct(StringComparer.Ordinal).Count());
        Assert.Equal(names, stored.Take(3));
        Assert.Equal("given", stored[5]);
        foreach (var (t, i) in table.Select((t, i) => (t, i)))
        {
            long sec = t.GetProperty("date-sec").GetInt64();
            Assert.InRange(sec, before, after);
            // As qsd: the VM clock is the wall clock, and no instruction count is recorded.
            Assert.Equal(sec, t.GetProperty("vm-clock-sec").GetInt64());
            Assert.Equal(t.GetProperty("date-nsec").GetInt64(), t.GetProperty("vm-clock-nsec").GetInt64());
            Assert.False(t.TryGetProperty("icount", out _));
            if (i < 5)
            {
                string stem = "snap-" + DateTimeOffset.FromUnixTimeSeconds(sec).UtcDateTime.ToString("yyyyMMdd-HHmmss", System.Globalization.CultureInfo.InvariantCulture);
                Assert.True(stored[i] == stem || stored[i].StartsWith(stem + "-", StringComparison.Ordinal), $"{stored[i]} vs {stem}");
            }
        }

        var check = QemuTools.RunIn(strata.Directory, "qemu-img", "check", "c.qcow2");
        Assert.True(check.ExitCode == 0, check.StdOut + check.StdErr);
    }
}
