using Xunit;

namespace Strata.Qmp.Server.Tests;

/// <summary>
/// A backup while a real NBD client (qemu-io over strata-daemon's export) rewrites the whole disk: the target must
/// hold the disk as it was when the job started, the source what the client wrote.
/// </summary>
public sealed class BackupOverNbdTests
{
    private const long Size = 16 << 20;

    [Fact]
    public async Task A_backup_under_an_nbd_writer_is_the_disk_at_its_start()
    {
        Task? writer = null;
        string? writerError = null;
        void Prepare(string dir)
        {
            string src = Path.Combine(dir, "src.qcow2");
            QemuTools.QemuImg("create", "-q", "-f", "qcow2", src, Size.ToString()).EnsureSuccess();
            QemuTools.QemuIo("-f", "qcow2", "-c", $"write -P 17 0 {Size}", src).EnsureSuccess();
            // The target file appears inside the drained transaction that starts the job: a write sent after it
            // exists reaches the disk only once the copy-before-write filter is in place.
            writer = Task.Run(async () =>
            {
                string target = Path.Combine(dir, "d.qcow2");
                for (int i = 0; i < 1000 && !File.Exists(target); i++)
                    await Task.Delay(10);
                var r = QemuTools.QemuIo("-f", "raw", "-c", $"write -P 34 0 {Size / 2}", "-c", $"write -z {Size / 2} {Size / 4}",
                    "-c", $"write -P 35 {Size * 3 / 4} {Size / 4}", $"nbd+unix:///src?socket={dir}/nbd.sock");
                if (!r.Succeeded)
                    writerError = r.ToString();
            });
        }

        string? checkError = null;
        void Finish(string dir)
        {
            string d = Path.Combine(dir, "d.qcow2"), src = Path.Combine(dir, "src.qcow2");
            var check = QemuTools.QemuImg("check", "-U", d);
            var old = QemuTools.QemuIo("-r", "-U", "-f", "qcow2", "-c", $"read -P 17 0 {Size}", d);
            var now = QemuTools.QemuIo("-r", "-U", "-f", "qcow2", "-c", $"read -P 34 0 {Size / 2}", "-c", $"read -P 0 {Size / 2} {Size / 4}",
                "-c", $"read -P 35 {Size * 3 / 4} {Size / 4}", src);
            foreach (var r in new[] { check, old, now })
                if (!r.Succeeded || r.ToString().Contains("Pattern verification failed", StringComparison.Ordinal))
                    checkError += r + "\n";
        }

        Step E(string line) => new(line, Match.Exact);
        Step[] steps =
        [
            E("""{"execute":"qmp_capabilities"}"""),
            E("""{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"src","file":{"driver":"file","filename":"$D/src.qcow2"}}}"""),
            E("""{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"$D/nbd.sock"}}}}"""),
            E("""{"execute":"block-export-add","arguments":{"type":"nbd","id":"x","node-name":"src","writable":true}}"""),
            E("""{"execute":"drive-backup","arguments":{"job-id":"j","device":"src","target":"$D/d.qcow2","sync":"full","speed":8388608}}"""),
            new(Step.WaitPrefix + "\"status\": \"null\", \"id\": \"j\"", Match.Exact),
        ];
        var t = await QmpScript.RunAsync(Daemons.Strata, steps, null, Prepare, dir =>
        {
            writer!.Wait(TimeSpan.FromSeconds(60));
            Finish(dir);
        });

        Assert.True(writerError is null, writerError);
        Assert.True(checkError is null, checkError);
        var events = string.Join("\n", t.Answers[^1]);
        Assert.Contains("BLOCK_JOB_COMPLETED", events, StringComparison.Ordinal);
        Assert.DoesNotContain("\"error\"", events, StringComparison.Ordinal);
        Assert.All(t.Answers.Take(5), a => Assert.Contains("\"return\"", a[^1], StringComparison.Ordinal));
    }
}
