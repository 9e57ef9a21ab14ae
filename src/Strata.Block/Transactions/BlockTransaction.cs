namespace Strata.Block.Transactions;

/// <summary>
/// A graph change as an undo log (QEMU's util/transactions.c shape): every action's prepare registers records with
/// commit / abort / clean steps; finishing runs the commits in order, failing runs the aborts in reverse; clean runs
/// last either way. Every backend of the graph stays drained from before the first prepare until after the last clean,
/// so requests in flight finish first and new ones wait, and no client sees a half-done change.
/// A single graph command (blockdev-snapshot-sync alone) is a transaction of one action.
/// </summary>
public sealed class BlockTransaction
{
    private readonly List<Record> _log = [];

    private BlockTransaction(BlockGraph graph, TransactionProperties properties, Jobs.JobRegistry? jobs)
    {
        Graph = graph;
        Properties = properties;
        Jobs = jobs;
    }

    /// <summary>Where actions that start jobs (backups) register them; null where no job may start.</summary>
    public Jobs.JobRegistry? Jobs { get; }

    public BlockGraph Graph { get; }

    public TransactionProperties Properties { get; }

    private Jobs.JobTransaction? _jobGroup;

    /// <summary>
    /// The job transaction the actions' jobs join: one for all of them with completion-mode grouped (QEMU's
    /// block_job_txn), none (each job on its own) otherwise.
    /// </summary>
    public Jobs.JobTransaction? JobGroup =>
        Properties.CompletionMode == ActionCompletionMode.Grouped ? _jobGroup ??= new Jobs.JobTransaction() : null;

    private sealed record Record(Action? Commit, Func<ValueTask>? Abort, Func<ValueTask>? Clean);

    /// <summary>
    /// Registers one step of a prepare. <paramref name="commit"/> must not fail (it swaps pointers);
    /// <paramref name="abort"/> undoes what the step did; <paramref name="clean"/> releases what the step held.
    /// </summary>
    public void Register(Action? commit = null, Func<ValueTask>? abort = null, Func<ValueTask>? clean = null) =>
        _log.Add(new Record(commit, abort, clean));

    /// <summary>Runs <paramref name="actions"/> all or nothing; throws the first prepare's error after rolling back.</summary>
    public static async ValueTask RunAsync(BlockGraph graph, IReadOnlyList<ITransactionAction> actions,
        TransactionProperties? properties = null, Jobs.JobRegistry? jobs = null, CancellationToken ct = default)
    {
        var tx = new BlockTransaction(graph, properties ?? TransactionProperties.Default, jobs);
        await using var drained = (await graph.DrainAllAsync(ct).ConfigureAwait(false)).ConfigureAwait(false);
        if (jobs is not null)
        {
            // qmp_transaction's bdrv_drain_all: every running job stops at a pause point once, then goes on.
            var active = jobs.Jobs.Where(j => !j.IsInternal && j.IsActive).ToList();
            foreach (var j in active)
                await j.DrainPauseAsync().ConfigureAwait(false);
            foreach (var j in active)
                j.Resume();
        }
        try
        {
            await tx.PrepareAllAsync(actions, ct).ConfigureAwait(false);
        }
        finally
        {
            tx.ResumeDrainedJobs();
        }
    }

    private readonly List<Jobs.Job> _drainedJobs = [];

    /// <summary>For each drained job, the last drain that reached it (the action's number): it resumes at that drain's end.</summary>
    private readonly Dictionary<Jobs.Job, int> _lastDrain = new(ReferenceEqualityComparer.Instance);

    private int _drains;

    /// <summary>
    /// An action drains a node (bdrv_drained_begin): the jobs working on it (<paramref name="jobs"/>) pause until the
    /// transaction ends.
    /// </summary>
    public async ValueTask DrainJobsAsync(IEnumerable<Jobs.Job> jobs)
    {
        int drain = ++_drains;
        foreach (var j in jobs)
        {
            if (_lastDrain.ContainsKey(j))
            {
                _lastDrain[j] = drain;
                continue;
            }
            if (!j.IsActive)
                continue;
            await j.DrainPauseAsync().ConfigureAwait(false);
            _drainedJobs.Add(j);
            _lastDrain[j] = drain;
        }
    }

    /// <summary>A job created by an action on a drained node: it starts paused and runs once the transaction ends.</summary>
    public void AddDrainedJob(Jobs.Job job)
    {
        job.Pause();
        _drainedJobs.Add(job);
        _lastDrain[job] = _drains;
    }

    /// <summary>
    /// bdrv_drained_end, action by action: a job goes on when the last drain that reached it ends; of the jobs one drain
    /// frees, those nearest the drained node (the latest filters) go first.
    /// </summary>
    private void ResumeDrainedJobs()
    {
        var order = _drainedJobs.Select((j, i) => (Job: j, Index: i))
            .OrderBy(x => _lastDrain[x.Job]).ThenByDescending(x => x.Index).Select(x => x.Job).ToList();
        foreach (var j in order)
            if (j.Status != global::Strata.Block.Jobs.JobStatus.Null)
                j.Resume();
        _drainedJobs.Clear();
        _lastDrain.Clear();
    }

    private async ValueTask PrepareAllAsync(IReadOnlyList<ITransactionAction> actions, CancellationToken ct)
    {
        try
        {
            foreach (var action in actions)
                await action.PrepareAsync(this, ct).ConfigureAwait(false);
        }
        catch
        {
            for (int i = _log.Count - 1; i >= 0; i--)
                if (_log[i].Abort is { } abort)
                    await abort().ConfigureAwait(false);
            await CleanAsync().ConfigureAwait(false);
            throw;
        }
        foreach (var r in _log)
            r.Commit?.Invoke();
        await CleanAsync().ConfigureAwait(false);
    }

    private async ValueTask CleanAsync()
    {
        foreach (var r in _log)
            if (r.Clean is { } clean)
                await clean().ConfigureAwait(false);
        _log.Clear();
    }
}
