namespace Strata.Block.Jobs;

/// <summary>
/// Jobs that complete as a group (QEMU's JobTxn): none is finalized until all have finished their runs, and when one
/// fails or is cancelled the others are cancelled and all are aborted. A job created without a transaction gets one
/// of its own, so single jobs and groups share one completion path.
/// </summary>
public sealed class JobTransaction
{
    private readonly List<Job> _jobs = [];

    /// <summary>The jobs still in the group, newest first (QEMU inserts at the head).</summary>
    public IReadOnlyList<Job> Jobs => _jobs;

    /// <summary>A member failed: the group is being aborted.</summary>
    public bool Aborting { get; internal set; }

    internal void Add(Job job)
    {
        if (job.Transaction is not null)
            throw new InvalidOperationException($"job '{job.Id}' already belongs to a transaction");
        _jobs.Insert(0, job);
        job.Transaction = this;
    }

    internal void Remove(Job job)
    {
        if (ReferenceEquals(job.Transaction, this))
        {
            _jobs.Remove(job);
            job.Transaction = null;
        }
    }
}
