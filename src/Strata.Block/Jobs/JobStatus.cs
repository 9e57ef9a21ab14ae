namespace Strata.Block.Jobs;

/// <summary>The states of a job (QAPI JobStatus), in QEMU's order.</summary>
public enum JobStatus
{
    Undefined,
    Created,
    Running,
    Paused,
    Ready,
    Standby,
    Waiting,
    Pending,
    Aborting,
    Concluded,
    Null,
}

/// <summary>What a user may ask of a job (QAPI JobVerb), in QEMU's order.</summary>
public enum JobVerb
{
    Cancel,
    Pause,
    Resume,
    SetSpeed,
    Complete,
    Finalize,
    Dismiss,
}

/// <summary>
/// QEMU's two job tables (job.c): which status may follow which, and which verb each status accepts. Kept as data so
/// that the tables can be read (and tested) against QEMU's line by line.
/// </summary>
public static class JobTransitions
{
    // Columns in JobStatus order: U, C, R, P, Y, S, W, D, X, E, N.
    private static readonly bool[,] Next = ToTable(
        /* U */ "01000000000",
        /* C */ "00100000101",
        /* R */ "00011010100",
        /* P */ "00100000000",
        /* Y */ "00000110100",
        /* S */ "00001000000",
        /* W */ "00000001100",
        /* D */ "00000000110",
        /* X */ "00000000110",
        /* E */ "00000000001",
        /* N */ "00000000000");

    // Rows in JobVerb order, columns in JobStatus order.
    private static readonly bool[,] Verbs = ToTable(
        /* cancel    */ "01111111000",
        /* pause     */ "01111100000",
        /* resume    */ "01111100000",
        /* set-speed */ "01111100000",
        /* complete  */ "00001000000",
        /* finalize  */ "00000001000",
        /* dismiss   */ "00000000010");

    private static bool[,] ToTable(params string[] rows)
    {
        var t = new bool[rows.Length, rows[0].Length];
        for (int r = 0; r < rows.Length; r++)
            for (int c = 0; c < rows[r].Length; c++)
                t[r, c] = rows[r][c] == '1';
        return t;
    }

    /// <summary>Whether a job in <paramref name="from"/> may move to <paramref name="to"/>.</summary>
    public static bool CanMove(JobStatus from, JobStatus to) => Next[(int)from, (int)to];

    /// <summary>Whether a job in <paramref name="status"/> accepts <paramref name="verb"/>.</summary>
    public static bool Accepts(JobStatus status, JobVerb verb) => Verbs[(int)verb, (int)status];

    /// <summary>The QAPI name of a status ("concluded").</summary>
    public static string Name(JobStatus status) => status switch
    {
        JobStatus.Undefined => "undefined",
        JobStatus.Created => "created",
        JobStatus.Running => "running",
        JobStatus.Paused => "paused",
        JobStatus.Ready => "ready",
        JobStatus.Standby => "standby",
        JobStatus.Waiting => "waiting",
        JobStatus.Pending => "pending",
        JobStatus.Aborting => "aborting",
        JobStatus.Concluded => "concluded",
        _ => "null",
    };

    /// <summary>The QAPI name of a verb ("set-speed").</summary>
    public static string Name(JobVerb verb) => verb switch
    {
        JobVerb.Cancel => "cancel",
        JobVerb.Pause => "pause",
        JobVerb.Resume => "resume",
        JobVerb.SetSpeed => "set-speed",
        JobVerb.Complete => "complete",
        JobVerb.Finalize => "finalize",
        _ => "dismiss",
    };

    /// <summary>Waiting, pending, aborting, concluded and null: the job's run is over (job_is_completed).</summary>
    public static bool IsCompleted(JobStatus s) => s is JobStatus.Waiting or JobStatus.Pending or JobStatus.Aborting or JobStatus.Concluded or JobStatus.Null;

    /// <summary>Ready and standby (job_is_ready).</summary>
    public static bool IsReady(JobStatus s) => s is JobStatus.Ready or JobStatus.Standby;
}
