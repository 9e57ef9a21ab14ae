namespace Strata.Block.Jobs;

/// <summary>Something a job reports to whoever listens (the QMP server turns these into events).</summary>
public abstract record JobEvent(Job Job);

/// <summary>The job moved to <see cref="Status"/> (JOB_STATUS_CHANGE; never raised for internal jobs).</summary>
public sealed record JobStatusChanged(Job Job, JobStatus Status) : JobEvent(Job);

/// <summary>The job became ready for job-complete (BLOCK_JOB_READY for block jobs).</summary>
public sealed record JobReady(Job Job) : JobEvent(Job);

/// <summary>The job waits for job-finalize (BLOCK_JOB_PENDING for block jobs; raised only without auto-finalize).</summary>
public sealed record JobPendingFinalize(Job Job) : JobEvent(Job);

/// <summary>
/// A started job was finalized: <see cref="Cancelled"/> tells BLOCK_JOB_CANCELLED from BLOCK_JOB_COMPLETED, whose
/// error is the job's <see cref="Job.Error"/>.
/// </summary>
public sealed record JobFinished(Job Job, bool Cancelled) : JobEvent(Job);

/// <summary>
/// Where jobs send their events: one object per registry, which the server subscribes to. Handlers run on the
/// thread that changed the job, with the registry's lock held, so they must only queue work (as the QMP server's
/// per-session output queues do) and never call back into the registry.
/// </summary>
public sealed class JobEventSink
{
    public event Action<JobEvent>? Raised;

    internal void Publish(JobEvent e) => Raised?.Invoke(e);
}
