namespace Strata.Block.Jobs;

/// <summary>What a block job does on an I/O error (QAPI BlockdevOnError, in QEMU's order).</summary>
public enum BlockdevOnError { Report, Ignore, Enospc, Stop, Auto }

/// <summary>What a block job did about an error (QAPI BlockErrorAction, in QEMU's order).</summary>
public enum BlockErrorAction { Ignore, Report, Stop }

/// <summary>A block job's I/O status (QAPI BlockDeviceIoStatus).</summary>
public enum BlockIoStatus { Ok, Failed, Nospace }

/// <summary>A block job met an I/O error and applied its policy (BLOCK_JOB_ERROR).</summary>
public sealed record BlockJobError(Job Job, bool IsRead, BlockErrorAction Action) : JobEvent(Job);

/// <summary>A block job as query-block-jobs shows it (BlockJobInfo).</summary>
public sealed record BlockJobSnapshot(string Type, string Device, long Len, long Offset, bool Busy, bool Paused, long Speed,
    BlockIoStatus IoStatus, bool Ready, JobStatus Status, bool AutoFinalize, bool AutoDismiss, string? Error);

/// <summary>
/// A job that works on block nodes (QEMU's BlockJob, blockjob.c): a speed enforced by <see cref="PaceNs"/>,
/// error policies with BLOCK_JOB_ERROR and an I/O status, and the BLOCK_JOB_* events that the daemon derives from
/// the job's events.
/// </summary>
public abstract class BlockJob : Job
{
    private long _speed;
    private BlockIoStatus _ioStatus;

    protected BlockJob(string? id, long speed, bool autoFinalize, bool autoDismiss)
        : base(id, autoFinalize, autoDismiss)
    {
        _speed = speed;
    }

    private long _nextNs;

    /// <summary>
    /// The pace the speed sets, in the 100 ms slices of QEMU's rate limit: <paramref name="bytes"/> started now push the
    /// next start back by bytes / speed; returns how long to wait before the next start (0 when unlimited). A late
    /// wake-up is made up for (at most one slice ahead), so sleeps that overrun do not lower the average below the speed.
    /// </summary>
    protected long PaceNs(long bytes)
    {
        long now = (long)(System.Diagnostics.Stopwatch.GetTimestamp() * (1e9 / System.Diagnostics.Stopwatch.Frequency));
        lock (JobLock)
        {
            if (_speed <= 0)
                return 0;
            if (bytes > 0)
                _nextNs = Math.Max(_nextNs, now - RateLimiter.DefaultSliceNs) + (long)(bytes * 1e9 / _speed);
            return Math.Max(0, _nextNs - now);
        }
    }

    /// <summary>Bytes per second, 0 = unlimited.</summary>
    public long Speed { get { lock (JobLock) return _speed; } }

    public BlockIoStatus IoStatus { get { lock (JobLock) return _ioStatus; } }

    public bool IsReady => Status is JobStatus.Ready or JobStatus.Standby;

    /// <summary>
    /// Whether a cancel ends the run at once (no I/O in flight): QEMU then completes the job before the cancel's reply.
    /// </summary>
    public virtual bool StopsAtOnce => true;

    /// <summary>QEMU's checks of a speed given at creation (block_job_create).</summary>
    public static void CheckSpeed(long speed)
    {
        if (speed < 0)
            throw new BlockException("Parameter 'speed' expects a non-negative value");
    }

    /// <summary>block-job-set-speed (block_job_set_speed): the verb check, then the value; a faster speed wakes the job.</summary>
    public void SetSpeed(long speed)
    {
        lock (JobLock)
        {
            CheckVerb(JobVerb.SetSpeed);
            CheckSpeed(speed);
            long old = _speed;
            _speed = speed;
            OnSpeedChanged(speed > old || speed == 0);
        }
    }

    /// <summary>The speed changed; <paramref name="faster"/> when a waiting job should be woken.</summary>
    protected virtual void OnSpeedChanged(bool faster)
    {
    }

    /// <summary>block_job_user_resume: a resumed job starts with a clean I/O status.</summary>
    protected override void OnUserResume() => _ioStatus = BlockIoStatus.Ok;

    /// <summary>
    /// block_job_error_action: the action <paramref name="policy"/> takes for <paramref name="error"/>, announced with
    /// BLOCK_JOB_ERROR; "stop" pauses the job (resumed by the user) and records the I/O status.
    /// </summary>
    protected BlockErrorAction ErrorAction(BlockdevOnError policy, bool isRead, Exception error)
    {
        bool noSpace = IsNoSpace(error);
        var action = policy switch
        {
            BlockdevOnError.Enospc or BlockdevOnError.Auto => noSpace ? BlockErrorAction.Stop : BlockErrorAction.Report,
            BlockdevOnError.Stop => BlockErrorAction.Stop,
            BlockdevOnError.Ignore => BlockErrorAction.Ignore,
            _ => BlockErrorAction.Report,
        };
        lock (JobLock)
        {
            if (!IsInternal)
                Publish(new BlockJobError(this, isRead, action));
            if (action == BlockErrorAction.Stop)
            {
                PauseAsUser();
                if (_ioStatus == BlockIoStatus.Ok)
                    _ioStatus = noSpace ? BlockIoStatus.Nospace : BlockIoStatus.Failed;
            }
        }
        return action;
    }

    private static bool IsNoSpace(Exception e)
    {
        for (var x = e; x is not null; x = x.InnerException)
            if (x.Message.Contains("No space left on device", StringComparison.Ordinal) || (x.HResult & 0xFFFF) == 28 && x is IOException)
                return true;
        return false;
    }

    /// <summary>query-block-jobs' view of the job.</summary>
    public BlockJobSnapshot Snapshot()
    {
        lock (JobLock)
        {
            return new BlockJobSnapshot(Type, Id!, TotalProgress, CurrentProgress, IsBusy, IsPauseRequested, _speed, _ioStatus,
                IsReady, Status, AutoFinalize, AutoDismiss, Error);
        }
    }
}
