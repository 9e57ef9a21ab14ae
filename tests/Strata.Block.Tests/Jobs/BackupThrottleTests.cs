using System.Diagnostics;
using System.Text.Json.Nodes;
using Strata.Block.Jobs;
using Xunit;

namespace Strata.Block.Tests.Jobs;

/// <summary>A backup with a speed holds it: the progress measured over more than five seconds is within 10 % of it.</summary>
public sealed class BackupThrottleTests
{
    [Fact]
    public async Task A_backup_copies_at_its_speed()
    {
        const long size = 64 << 20;
        const long speed = 6 << 20;
        using var dir = new TempDir("thr");
        string src = dir.Combine("src.qcow2"), tgt = dir.Combine("tgt.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", src, size.ToString()).EnsureSuccess();
        QemuTools.QemuIo("-f", "qcow2", "-c", $"write -P 7 0 {size}", src).EnsureSuccess();
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", tgt, size.ToString()).EnsureSuccess();

        var registry = new JobRegistry(new MainLoop());
        await using var g = new BlockGraph();
        JsonObject Qcow2(string node, string file) =>
            new() { ["driver"] = "qcow2", ["node-name"] = node, ["file"] = new JsonObject { ["driver"] = "file", ["filename"] = file } };
        var source = await g.AddAsync(Qcow2("src", src));
        var target = await g.AddAsync(Qcow2("tgt", tgt));
        var job = BackupJob.Create(registry, g, source, target, new BackupOptions { JobId = "t", Sync = MirrorSyncMode.Full, Speed = speed });
        registry.Start(job);

        await Task.Delay(500); // the first slice may run ahead
        var clock = Stopwatch.StartNew();
        long start = job.CurrentProgress;
        await Task.Delay(5500);
        long copied = job.CurrentProgress - start;
        double rate = copied / clock.Elapsed.TotalSeconds;
        Assert.InRange(rate, speed * 0.9, speed * 1.1);

        // A new speed takes effect: twice as fast now (what is left of the disk lasts for this).
        job.SetSpeed(2 * speed);
        await Task.Delay(300);
        clock.Restart();
        start = job.CurrentProgress;
        await Task.Delay(1500);
        rate = (job.CurrentProgress - start) / clock.Elapsed.TotalSeconds;
        Assert.InRange(rate, 2 * speed * 0.85, 2 * speed * 1.15);

        using (await registry.MainLoop.EnterAsync())
            job.UserCancel();
        await job.Run;
        while (job.Status != JobStatus.Null)
            await Task.Delay(10);
        using (await registry.MainLoop.EnterAsync())
        {
        }
    }
}
