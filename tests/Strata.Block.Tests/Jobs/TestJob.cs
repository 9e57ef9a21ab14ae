using Strata.Block.Jobs;

namespace Strata.Block.Tests.Jobs;

/// <summary>A job the tests steer: it runs in small steps with pause points until told to finish (or fail).</summary>
internal sealed class TestJob(string? id, bool autoFinalize = true, bool autoDismiss = true) : Job(id, autoFinalize, autoDismiss)
{
    private readonly TaskCompletionSource _finish = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly List<string> _calls = [];

    public override string Type => "backup";

    public string? FailWith { get; init; }

    /// <summary>Moves to "ready" at once and supports job-complete (as mirror does).</summary>
    public bool BecomeReady { get; init; }

    /// <summary>Keeps running after a cancel until <see cref="Finish"/> (a slow I/O in flight).</summary>
    public bool IgnoreCancel { get; init; }

    public string? PrepareFailure { get; init; }

    public int Steps { get; private set; }

    public IReadOnlyList<string> Calls
    {
        get
        {
            lock (_calls)
                return [.. _calls];
        }
    }

    public void Finish() => _finish.TrySetResult();

    protected override async Task RunAsync()
    {
        if (BecomeReady)
            TransitionToReady();
        ProgressSetRemaining(100);
        while (!_finish.Task.IsCompleted && (IgnoreCancel || !IsCancelled))
        {
            await PausePointAsync();
            Steps++;
            await Task.WhenAny(_finish.Task, Task.Delay(2));
        }

        ProgressUpdate(100);
        if (FailWith is not null)
            throw new BlockException(FailWith);
    }

    private void Call(string name)
    {
        lock (_calls)
            _calls.Add(name);
    }

    protected override bool SupportsComplete => BecomeReady;

    protected override void OnComplete() => Finish();

    protected override void Prepare()
    {
        Call("prepare");
        if (PrepareFailure is not null)
            throw new BlockException(PrepareFailure);
    }

    protected override void Commit() => Call("commit");

    protected override void Abort() => Call("abort");

    protected override void Clean() => Call("clean");
}

/// <summary>A registry whose events the test reads.</summary>
internal sealed class JobBench : IDisposable
{
    private readonly List<JobEvent> _events = [];

    public JobBench()
    {
        Registry = new JobRegistry(Loop);
        Registry.Events.Raised += e =>
        {
            lock (_events)
                _events.Add(e);
        };
    }

    public MainLoop Loop { get; } = new();

    public JobRegistry Registry { get; }

    public IReadOnlyList<JobEvent> Events
    {
        get
        {
            lock (_events)
                return [.. _events];
        }
    }

    /// <summary>The JOB_STATUS_CHANGE statuses of one job, in order.</summary>
    public IReadOnlyList<string> Statuses(Job job) =>
        [.. Events.OfType<JobStatusChanged>().Where(e => ReferenceEquals(e.Job, job)).Select(e => JobTransitions.Name(e.Status))];

    public TestJob Start(TestJob job, JobTransaction? txn = null)
    {
        Registry.Create(job, txn);
        Registry.Start(job);
        return job;
    }

    public static async Task WaitFor(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (!condition())
        {
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException("timed out waiting for " + what);
            await Task.Delay(2);
        }
    }

    public static Task WaitForStatus(Job job, JobStatus status) => WaitFor(() => job.Status == status, $"{job.Id} to be {status}");

    public void Dispose() => Loop.Dispose();
}
