using Strata.Block.Jobs;
using Xunit;

namespace Strata.Block.Tests.Jobs;

/// <summary>QEMU 7.2's job state machine: its tables, every verb in every status a job can be held in, and the event sequences.</summary>
public sealed class JobStateMachineTests
{
    private static readonly JobStatus[] AllStatuses = Enum.GetValues<JobStatus>();
    private static readonly JobVerb[] AllVerbs = Enum.GetValues<JobVerb>();

    // job.c's JobSTT and JobVerbTable, written out as the statuses each row allows.
    private static readonly Dictionary<JobStatus, JobStatus[]> QemuNext = new()
    {
        [JobStatus.Undefined] = [JobStatus.Created],
        [JobStatus.Created] = [JobStatus.Running, JobStatus.Aborting, JobStatus.Null],
        [JobStatus.Running] = [JobStatus.Paused, JobStatus.Ready, JobStatus.Waiting, JobStatus.Aborting],
        [JobStatus.Paused] = [JobStatus.Running],
        [JobStatus.Ready] = [JobStatus.Standby, JobStatus.Waiting, JobStatus.Aborting],
        [JobStatus.Standby] = [JobStatus.Ready],
        [JobStatus.Waiting] = [JobStatus.Pending, JobStatus.Aborting],
        [JobStatus.Pending] = [JobStatus.Aborting, JobStatus.Concluded],
        [JobStatus.Aborting] = [JobStatus.Aborting, JobStatus.Concluded],
        [JobStatus.Concluded] = [JobStatus.Null],
        [JobStatus.Null] = [],
    };

    private static readonly Dictionary<JobVerb, JobStatus[]> QemuVerbs = new()
    {
        [JobVerb.Cancel] = [JobStatus.Created, JobStatus.Running, JobStatus.Paused, JobStatus.Ready, JobStatus.Standby, JobStatus.Waiting, JobStatus.Pending],
        [JobVerb.Pause] = [JobStatus.Created, JobStatus.Running, JobStatus.Paused, JobStatus.Ready, JobStatus.Standby],
        [JobVerb.Resume] = [JobStatus.Created, JobStatus.Running, JobStatus.Paused, JobStatus.Ready, JobStatus.Standby],
        [JobVerb.SetSpeed] = [JobStatus.Created, JobStatus.Running, JobStatus.Paused, JobStatus.Ready, JobStatus.Standby],
        [JobVerb.Complete] = [JobStatus.Ready],
        [JobVerb.Finalize] = [JobStatus.Pending],
        [JobVerb.Dismiss] = [JobStatus.Concluded],
    };

    [Fact]
    public void Tables_are_QEMUs()
    {
        foreach (var from in AllStatuses)
            foreach (var to in AllStatuses)
                Assert.True(QemuNext[from].Contains(to) == JobTransitions.CanMove(from, to), $"{from} -> {to}");
        foreach (var verb in AllVerbs)
            foreach (var s in AllStatuses)
                Assert.True(QemuVerbs[verb].Contains(s) == JobTransitions.Accepts(s, verb), $"{verb} in {s}");
    }

    /// <summary>Holds a job in <paramref name="status"/> (with the jobs that keep it there), for the verb checks.</summary>
    private static async Task<(TestJob Job, Action Release)> HoldIn(JobBench b, JobStatus status)
    {
        switch (status)
        {
            case JobStatus.Created:
            {
                var j = b.Registry.Create(new TestJob("x"));
                return (j, () => j.Cancel(true));
            }

            case JobStatus.Running:
            {
                var j = b.Start(new TestJob("x"));
                return (j, j.Finish);
            }

            case JobStatus.Paused:
            {
                var j = b.Start(new TestJob("x"));
                j.UserPause();
                await JobBench.WaitForStatus(j, JobStatus.Paused);
                return (j, () => { j.UserResume(); j.Finish(); });
            }

            case JobStatus.Ready:
            {
                var j = b.Start(new TestJob("x") { BecomeReady = true });
                await JobBench.WaitForStatus(j, JobStatus.Ready);
                return (j, j.Finish);
            }

            case JobStatus.Standby:
            {
                var j = b.Start(new TestJob("x") { BecomeReady = true });
                await JobBench.WaitForStatus(j, JobStatus.Ready);
                j.UserPause();
                await JobBench.WaitForStatus(j, JobStatus.Standby);
                return (j, () => { j.UserResume(); j.Finish(); });
            }

            case JobStatus.Waiting:
            {
                var txn = new JobTransaction();
                var other = b.Start(new TestJob("other"), txn);
                var j = b.Start(new TestJob("x"), txn);
                j.Finish();
                await JobBench.WaitForStatus(j, JobStatus.Waiting);
                return (j, other.Finish);
            }

            case JobStatus.Pending:
            {
                var j = b.Start(new TestJob("x", autoFinalize: false));
                j.Finish();
                await JobBench.WaitForStatus(j, JobStatus.Pending);
                return (j, j.UserFinalize);
            }

            case JobStatus.Aborting:
            {
                // A failed job waits in "aborting" while a newer member of its transaction is still stopping (QEMU
                // finalizes the members newest first, waiting for each that still runs).
                var txn = new JobTransaction();
                var j = b.Start(new TestJob("x") { FailWith = "boom" }, txn);
                var other = b.Start(new TestJob("other") { IgnoreCancel = true }, txn);
                j.Finish();
                await JobBench.WaitForStatus(j, JobStatus.Aborting);
                return (j, other.Finish);
            }

            case JobStatus.Concluded:
            {
                var j = b.Start(new TestJob("x", autoDismiss: false));
                j.Finish();
                await JobBench.WaitForStatus(j, JobStatus.Concluded);
                return (j, j.UserDismiss);
            }

            default:
                throw new ArgumentOutOfRangeException(nameof(status));
        }
    }

    public static TheoryData<JobStatus> HeldStatuses => new(AllStatuses.Where(s => s is not (JobStatus.Undefined or JobStatus.Null)));

    [Theory]
    [MemberData(nameof(HeldStatuses))]
    public async Task Every_verb_is_accepted_or_refused_as_QEMU_says(JobStatus status)
    {
        using var b = new JobBench();
        var (job, release) = await HoldIn(b, status);
        Assert.Equal(status, job.Status);
        foreach (var verb in AllVerbs)
        {
            var refused = Record.Exception(() => job.CheckVerb(verb));
            if (QemuVerbs[verb].Contains(status))
                Assert.Null(refused);
            else
                Assert.Equal($"Job 'x' in state '{JobTransitions.Name(status)}' cannot accept command verb '{JobTransitions.Name(verb)}'",
                    Assert.IsType<BlockException>(refused).Message);
        }

        release();
        await JobBench.WaitFor(() => b.Registry.Jobs.Count == 0, "all jobs gone");
    }

    [Fact]
    public async Task Auto_dismissed_job_runs_through_every_status_to_null()
    {
        using var b = new JobBench();
        var j = b.Start(new TestJob("j"));
        j.Finish();
        await JobBench.WaitForStatus(j, JobStatus.Null);
        Assert.Equal(["created", "running", "waiting", "pending", "concluded", "null"], b.Statuses(j));
        Assert.Equal(["prepare", "commit", "clean"], j.Calls);
        Assert.Null(b.Registry.Find("j"));
        Assert.Equal((100, 100), (j.CurrentProgress, j.TotalProgress));
        var finished = Assert.Single(b.Events.OfType<JobFinished>());
        Assert.False(finished.Cancelled);
    }

    [Fact]
    public async Task Manual_dismiss_and_manual_finalize()
    {
        using var b = new JobBench();
        var j = b.Start(new TestJob("j", autoFinalize: false, autoDismiss: false));
        j.Finish();
        await JobBench.WaitForStatus(j, JobStatus.Pending);
        Assert.Single(b.Events.OfType<JobPendingFinalize>());
        Assert.Empty(j.Calls);
        Assert.Equal("Job 'j' in state 'pending' cannot accept command verb 'dismiss'", Assert.Throws<BlockException>(j.UserDismiss).Message);
        j.UserFinalize();
        Assert.Equal(JobStatus.Concluded, j.Status);
        Assert.Same(j, b.Registry.Find("j"));
        j.UserDismiss();
        Assert.Equal(["created", "running", "waiting", "pending", "concluded", "null"], b.Statuses(j));
        Assert.Null(b.Registry.Find("j"));
    }

    [Fact]
    public async Task Pause_and_resume_at_pause_points_with_QEMUs_messages()
    {
        using var b = new JobBench();
        var j = b.Start(new TestJob("j"));
        Assert.Equal("Can't resume a job that was not paused", Assert.Throws<BlockException>(j.UserResume).Message);
        j.UserPause();
        Assert.Equal("Job is already paused", Assert.Throws<BlockException>(j.UserPause).Message);
        await JobBench.WaitForStatus(j, JobStatus.Paused);
        int steps = j.Steps;
        await Task.Delay(30);
        Assert.Equal(steps, j.Steps); // no progress while paused
        j.UserResume();
        await JobBench.WaitFor(() => j.Steps > steps, "steps after resume");
        j.Finish();
        await JobBench.WaitForStatus(j, JobStatus.Null);
        Assert.Equal(["created", "running", "paused", "running", "waiting", "pending", "concluded", "null"], b.Statuses(j));
    }

    [Fact]
    public async Task Cancel_while_running_or_paused_aborts_with_operation_canceled()
    {
        using var b = new JobBench();
        var running = b.Start(new TestJob("r", autoDismiss: false));
        var paused = b.Start(new TestJob("p", autoDismiss: false));
        paused.UserPause();
        await JobBench.WaitForStatus(paused, JobStatus.Paused);
        running.UserCancel();
        paused.UserCancel();
        await JobBench.WaitForStatus(running, JobStatus.Concluded);
        await JobBench.WaitForStatus(paused, JobStatus.Concluded);
        Assert.Equal(["created", "running", "aborting", "concluded"], b.Statuses(running));
        Assert.Equal(["created", "running", "paused", "running", "aborting", "concluded"], b.Statuses(paused));
        Assert.Equal("Operation canceled", running.Error);
        Assert.Equal(["abort", "clean"], running.Calls);
        Assert.All(b.Events.OfType<JobFinished>(), e => Assert.True(e.Cancelled));
        Assert.Equal(["p", "r"], b.Registry.Query().Select(q => q.Id));
        // job_cancel on a concluded job dismisses it.
        running.Cancel(force: true);
        Assert.Equal(JobStatus.Null, running.Status);
    }

    [Fact]
    public void Cancel_before_start_dismisses_at_once()
    {
        using var b = new JobBench();
        var j = b.Registry.Create(new TestJob("j", autoDismiss: false));
        j.UserCancel();
        Assert.Equal(["created", "aborting", "concluded", "null"], b.Statuses(j));
        Assert.Empty(b.Events.OfType<JobFinished>()); // never started: no completion event
    }

    [Fact]
    public async Task Failure_and_completion_of_a_ready_job()
    {
        using var b = new JobBench();
        var failing = b.Start(new TestJob("f", autoDismiss: false) { FailWith = "Could not write: No space left on device" });
        failing.Finish();
        await JobBench.WaitForStatus(failing, JobStatus.Concluded);
        Assert.Equal("Could not write: No space left on device", failing.Error);
        Assert.Equal(["created", "running", "aborting", "concluded"], b.Statuses(failing));
        Assert.False(Assert.Single(b.Events.OfType<JobFinished>()).Cancelled);

        var ready = b.Start(new TestJob("m", autoDismiss: false) { BecomeReady = true });
        await JobBench.WaitForStatus(ready, JobStatus.Ready);
        Assert.Single(b.Events.OfType<JobReady>());
        ready.UserComplete();
        await JobBench.WaitForStatus(ready, JobStatus.Concluded);
        Assert.Null(ready.Error);
        Assert.Equal(["created", "running", "ready", "waiting", "pending", "concluded"], b.Statuses(ready));

        var plain = b.Start(new TestJob("c") { BecomeReady = false });
        var cancelledReady = b.Start(new TestJob("cr") { BecomeReady = true, IgnoreCancel = true });
        await JobBench.WaitForStatus(cancelledReady, JobStatus.Ready);
        cancelledReady.UserCancel();
        Assert.Equal("Job 'c' in state 'running' cannot accept command verb 'complete'", Assert.Throws<BlockException>(plain.UserComplete).Message);
        plain.Finish();
        cancelledReady.Finish();
        await JobBench.WaitFor(() => b.Registry.Find("c") is null && b.Registry.Find("cr") is null, "jobs gone");
    }

    [Fact]
    public async Task Transaction_completes_together_and_aborts_together()
    {
        using var b = new JobBench();
        var txn = new JobTransaction();
        var a = b.Start(new TestJob("a", autoDismiss: false), txn);
        var c = b.Start(new TestJob("c", autoDismiss: false), txn);
        a.Finish();
        await JobBench.WaitForStatus(a, JobStatus.Waiting);
        await Task.Delay(20);
        Assert.Equal(JobStatus.Waiting, a.Status); // waits for c
        c.Finish();
        await JobBench.WaitForStatus(a, JobStatus.Concluded);
        await JobBench.WaitForStatus(c, JobStatus.Concluded);
        Assert.Equal(["created", "running", "waiting", "pending", "concluded"], b.Statuses(a));
        Assert.Contains("commit", a.Calls);

        var txn2 = new JobTransaction();
        var ok = b.Start(new TestJob("ok", autoDismiss: false), txn2);
        var bad = b.Start(new TestJob("bad", autoDismiss: false) { FailWith = "boom" }, txn2);
        bad.Finish();
        await JobBench.WaitForStatus(ok, JobStatus.Concluded);
        await JobBench.WaitForStatus(bad, JobStatus.Concluded);
        Assert.Equal("boom", bad.Error);
        Assert.Equal("Operation canceled", ok.Error);
        Assert.Equal(["abort", "clean"], ok.Calls);
        Assert.Equal(["created", "running", "aborting", "concluded"], b.Statuses(ok));

        // A failing prepare aborts the whole group.
        var txn3 = new JobTransaction();
        var p1 = b.Start(new TestJob("p1", autoDismiss: false), txn3);
        var p2 = b.Start(new TestJob("p2", autoDismiss: false) { PrepareFailure = "prepare failed" }, txn3);
        p1.Finish();
        await JobBench.WaitForStatus(p1, JobStatus.Waiting);
        p2.Finish(); // p2 finalizes the group: its failed prepare cancels p1 (QEMU leaves the finalizing job itself alone)
        await JobBench.WaitForStatus(p1, JobStatus.Concluded);
        await JobBench.WaitForStatus(p2, JobStatus.Concluded);
        Assert.Equal("prepare failed", p2.Error);
        Assert.Equal("Operation canceled", p1.Error);
        Assert.Equal("abort", p1.Calls[^2]);
    }
}
