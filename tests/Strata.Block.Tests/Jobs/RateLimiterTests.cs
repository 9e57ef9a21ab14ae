using System.Diagnostics;
using Strata.Block.Jobs;
using Xunit;

namespace Strata.Block.Tests.Jobs;

/// <summary>QEMU's slice-based rate limit, on a clock the test moves, and inside a job.</summary>
public sealed class RateLimiterTests
{
    [Fact]
    public void Slices_quota_and_delays()
    {
        long now = 1_000_000_000;
        var r = new RateLimiter(() => now);
        Assert.Equal(0, r.CalculateDelayNs(1 << 30)); // no speed: no limit

        r.SetSpeed(1_000_000); // 1 MB/s: 100 000 bytes per 100 ms slice
        Assert.Equal(0, r.CalculateDelayNs(50_000));
        now += 10_000_000;
        Assert.Equal(0, r.CalculateDelayNs(40_000));
        // 150 000 bytes = 1.5 slices: wait until 150 ms after the slice began.
        Assert.Equal(140_000_000, r.CalculateDelayNs(60_000));
        now += 50_000_000;
        Assert.Equal(90_000_000, r.CalculateDelayNs(0));
        // Past the stretched slice a new one starts with a fresh quota.
        now += 100_000_000;
        Assert.Equal(0, r.CalculateDelayNs(99_999));
        Assert.Equal(now, r.SliceStartNs);
        Assert.Equal(100_000_000, r.CalculateDelayNs(1));

        r.SetSpeed(1); // tiny speeds still allow one unit per slice
        now += 1_000_000_000;
        Assert.Equal(100_000_000, r.CalculateDelayNs(1));
        r.SetSpeed(0);
        Assert.Equal(0, r.CalculateDelayNs(1 << 20));
    }

    private sealed class LimitedJob(RateLimiter limiter, int chunks, int chunkSize) : Job("limited")
    {
        public override string Type => "backup";

        protected override async Task RunAsync()
        {
            ProgressSetRemaining((long)chunks * chunkSize);
            for (int i = 0; i < chunks && !IsCancelled; i++)
            {
                limiter.CalculateDelayNs((ulong)chunkSize);
                ProgressUpdate(chunkSize);
                await RateLimitSleepAsync(limiter);
            }
        }
    }

    [Fact]
    public async Task A_job_keeps_to_its_speed_and_cancel_cuts_the_wait()
    {
        using var b = new JobBench();
        var limiter = new RateLimiter();
        limiter.SetSpeed(1_000_000, 20_000_000); // 1 MB/s in 20 ms slices
        var sw = Stopwatch.StartNew();
        var job = b.Registry.Create(new LimitedJob(limiter, 5, 50_000)); // 250 kB: 250 ms
        b.Registry.Start(job);
        await job.Run;
        await JobBench.WaitForStatus(job, JobStatus.Null);
        Assert.InRange(sw.ElapsedMilliseconds, 200, 5000);

        limiter.SetSpeed(1, 10_000_000_000); // one byte per 10 s slice: only a cancel ends the wait
        sw.Restart();
        var slow = b.Registry.Create(new LimitedJob(limiter, 5, 1000) { });
        b.Registry.Start(slow);
        await Task.Delay(50);
        slow.UserCancel();
        await slow.Run.WaitAsync(TimeSpan.FromSeconds(5));
        await JobBench.WaitFor(() => b.Registry.Jobs.Count == 0, "jobs gone");
        Assert.InRange(sw.ElapsedMilliseconds, 0, 4000);
    }
}
