using System.Diagnostics;
using System.Text.Json.Nodes;
using Strata.Block.Jobs;
using Xunit;

namespace Strata.Block.Tests.Jobs;

/// <summary>Timing measurements: run alone, not beside the suite's busier tests.</summary>
[CollectionDefinition("Timing", DisableParallelization = true)]
public sealed class TimingCollection;

/// <summary>A backup with a speed holds it: measured over five and a half seconds, within 10 % of it.</summary>
[Collection("Timing")]
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
        // Five windows of 1.1 s: the median holds the speed within 10 %, the whole 5.5 s within 15 % (a loaded
        // machine may stall the process once).
        var clock = Stopwatch.StartNew();
        long start = job.CurrentProgress;
        var rates = new List<double>();
        for (int w = 0; w < 5; w++)
        {
            long before = job.CurrentProgress;
            var t0 = clock.Elapsed;
            await Task.Delay(1100);
            rates.Add((job.CurrentProgress - before) / (clock.Elapsed - t0).TotalSeconds);
        }
        rates.Sort();
        Assert.InRange(rates[2], speed * 0.9, speed * 1.1);
        double rate = (job.CurrentProgress - start) / clock.Elapsed.TotalSeconds;
        Assert.InRange(rate, speed * 0.85, speed * 1.15);

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
