namespace Strata.Block.Jobs;

/// <summary>A job as query-jobs shows it.</summary>
public sealed record JobSnapshot(string Id, string Type, JobStatus Status, long CurrentProgress, long TotalProgress, string? Error);

/// <summary>
/// Owns the jobs of a daemon (QEMU's global job list, as an object): unique ids with QEMU's rules and messages,
/// lookup, query, and the lock and event sink the jobs share. Jobs leave it when dismissed.
/// </summary>
public sealed class JobRegistry
{
    private readonly List<Job> _jobs = []; // newest first, as QEMU's list

    public JobRegistry(MainLoop mainLoop, JobEventSink? events = null)
    {
        MainLoop = mainLoop;
        Events = events ?? new JobEventSink();
    }

    /// <summary>Guards every job's state: verbs, the runs' pause points and completion.</summary>
    internal object Lock { get; } = new();

    public MainLoop MainLoop { get; }

    public JobEventSink Events { get; }

    /// <summary>Every job, internal ones included, newest first.</summary>
    public IReadOnlyList<Job> Jobs
    {
        get
        {
            lock (Lock)
                return [.. _jobs];
        }
    }

    /// <summary>The job with this id (internal jobs have none).</summary>
    public Job? Find(string id)
    {
        lock (Lock)
            return _jobs.Find(j => j.Id == id);
    }

    /// <summary>The job with this id, or QMP's "Job not found".</summary>
    public Job Get(string id) => Find(id) ?? throw new BlockException("Job not found");

    /// <summary>
    /// job_create: checks the id, registers the job in status "created" (which raises its first event) and adds it
    /// to <paramref name="transaction"/> or to a transaction of its own.
    /// </summary>
    /// <param name="internalJob">An internal job must have no id; any other must have a well-formed, unused one.</param>
    public T Create<T>(T job, JobTransaction? transaction = null, bool internalJob = false) where T : Job
    {
        ArgumentNullException.ThrowIfNull(job);
        lock (Lock)
        {
            if (job.Id is { } id)
            {
                if (internalJob)
                    throw new BlockException("Cannot specify job ID for internal job");
                if (!QemuId.IsWellFormed(id))
                    throw new BlockException($"Invalid job ID '{id}'");
                if (Find(id) is not null)
                    throw new BlockException($"Job ID '{id}' already in use");
            }
            else if (!internalJob)
                throw new BlockException("An explicit job ID is required");

            job.Attach(this);
            _jobs.Insert(0, job);
            (transaction ?? new JobTransaction()).Add(job);
            return job;
        }
    }

    /// <summary>Starts a created job: its run begins on the caller's thread (see <see cref="Job"/>).</summary>
    public void Start(Job job) => job.Start();

    /// <summary>query-jobs: the jobs with ids, newest first.</summary>
    public IReadOnlyList<JobSnapshot> Query()
    {
        lock (Lock)
            return [.. _jobs.Where(j => !j.IsInternal).Select(j => new JobSnapshot(j.Id!, j.Type, j.Status, j.CurrentProgress, j.TotalProgress, j.Error))];
    }

    private readonly List<Func<ValueTask>> _deferred = [];

    internal void Defer(Func<ValueTask> work)
    {
        lock (Lock)
            _deferred.Add(work);
    }

    /// <summary>
    /// Runs the waiting parts of job completions (closing nodes a finished job held). Whoever holds the main loop
    /// after a job verb or a transaction calls it, so that the graph is settled before the turn ends, as in QEMU where
    /// completion is synchronous.
    /// </summary>
    public async ValueTask RunDeferredAsync()
    {
        while (true)
        {
            Func<ValueTask>[] work;
            lock (Lock)
            {
                if (_deferred.Count == 0)
                    return;
                work = [.. _deferred];
                _deferred.Clear();
            }
            foreach (var w in work)
                await w().ConfigureAwait(false);
        }
    }

    /// <summary>
    /// After a cancel: waits for the job's run to end, completes it in the caller's turn of the main loop and closes
    /// what it held, so that the verb's reply follows the job's last events as in QEMU.
    /// </summary>
    public async ValueTask SettleAsync(Job job)
    {
        await job.Run.ConfigureAwait(false);
        job.ExitIfRunEnded();
        await RunDeferredAsync().ConfigureAwait(false);
    }

    internal void Remove(Job job)
    {
        lock (Lock)
            _jobs.Remove(job);
    }

    /// <summary>
    /// Shutdown (job_cancel_sync_all): cancels every job and waits for the runs to end, up to
    /// <paramref name="timeout"/>; the completions then run on the main loop.
    /// </summary>
    public async ValueTask CancelAllAsync(TimeSpan timeout)
    {
        var runs = new List<Task>();
        foreach (var job in Jobs)
        {
            runs.Add(job.Run);
            if (job.Status is not (JobStatus.Concluded or JobStatus.Null))
                job.Cancel(force: true);
        }

        try
        {
            await Task.WhenAll(runs).WaitAsync(timeout).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            // A run that ignores cancellation is left behind: shutdown must not hang on it.
        }
    }
}
