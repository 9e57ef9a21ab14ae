using Strata.Block.Jobs;
using Xunit;

namespace Strata.Block.Tests.Jobs;

/// <summary>Job ids with QEMU's rules and messages, lookup, query order and internal jobs.</summary>
public sealed class JobRegistryTests
{
    [Theory]
    [InlineData("1j", "Invalid job ID '1j'")]
    [InlineData("", "Invalid job ID ''")]
    [InlineData("a b", "Invalid job ID 'a b'")]
    [InlineData("-x", "Invalid job ID '-x'")]
    [InlineData("dup", "Job ID 'dup' already in use")]
    public void Ids_are_checked_as_QEMU_does(string id, string message)
    {
        using var b = new JobBench();
        b.Registry.Create(new TestJob("dup"));
        Assert.Equal(message, Assert.Throws<BlockException>(() => b.Registry.Create(new TestJob(id))).Message);
        Assert.Single(b.Registry.Jobs);
    }

    [Fact]
    public void Ids_internal_jobs_and_query()
    {
        using var b = new JobBench();
        Assert.Equal("An explicit job ID is required", Assert.Throws<BlockException>(() => b.Registry.Create(new TestJob(null))).Message);
        Assert.Equal("Cannot specify job ID for internal job",
            Assert.Throws<BlockException>(() => b.Registry.Create(new TestJob("i"), internalJob: true)).Message);
        var hidden = b.Registry.Create(new TestJob(null), internalJob: true);
        b.Registry.Create(new TestJob("a.b_c-1"));
        b.Registry.Create(new TestJob("z"));
        Assert.Equal(["z", "a.b_c-1"], b.Registry.Query().Select(j => j.Id)); // newest first, internal hidden
        Assert.Equal(3, b.Registry.Jobs.Count);
        Assert.Empty(b.Statuses(hidden)); // internal jobs raise no events
        Assert.Equal("Job not found", Assert.Throws<BlockException>(() => b.Registry.Get("nope")).Message);
        var snapshot = b.Registry.Query()[0];
        Assert.Equal(new JobSnapshot("z", "backup", JobStatus.Created, 0, 0, null), snapshot);
        hidden.Cancel(true);
        Assert.Equal(2, b.Registry.Jobs.Count);
    }

    [Fact]
    public async Task Completion_waits_for_the_main_loop()
    {
        using var b = new JobBench();
        var j = b.Start(new TestJob("j"));
        using (await b.Loop.EnterAsync())
        {
            j.Finish();
            await j.Run;
            await Task.Delay(20);
            Assert.Equal(JobStatus.Running, j.Status); // a command holds the loop: no completion in between
        }

        await JobBench.WaitForStatus(j, JobStatus.Null);
    }

    [Fact]
    public async Task CancelAll_stops_every_job()
    {
        using var b = new JobBench();
        b.Start(new TestJob("a"));
        var p = b.Start(new TestJob("p"));
        p.UserPause();
        await b.Registry.CancelAllAsync(TimeSpan.FromSeconds(5));
        await JobBench.WaitFor(() => b.Registry.Jobs.Count == 0, "no jobs");
    }
}
