using static Strata.Qmp.Server.Schema.QapiMember;

namespace Strata.Qmp.Server.Schema;

/// <summary>
/// The QAPI types of the block-job commands, blockdev-backup, drive-backup and the BLOCK_JOB_* events, transcribed from
/// qemu-storage-daemon 7.2's schema (qapi/block-core.json; member order as QEMU visits them), with Strata's
/// "relative-paths" in drive-backup's mode (<see cref="SnapshotTypes.NewImageMode"/>).
/// </summary>
public static class BackupTypes
{
    private static readonly QapiBuiltin Str = QapiBuiltin.Str;
    private static readonly QapiBuiltin Int = QapiBuiltin.Int;
    private static readonly QapiBuiltin Bool = QapiBuiltin.Bool;

    public static QapiEnum MirrorSyncMode { get; } = new("MirrorSyncMode", "top", "full", "none", "incremental", "bitmap");

    public static QapiEnum BitmapSyncMode { get; } = new("BitmapSyncMode", "on-success", "never", "always");

    public static QapiEnum BlockdevOnError { get; } = new("BlockdevOnError", "report", "ignore", "enospc", "stop", "auto");

    public static QapiEnum BlockDeviceIoStatus { get; } = new("BlockDeviceIoStatus", "ok", "failed", "nospace");

    private static readonly QapiObject BackupPerf = new("BackupPerf", Opt("use-copy-range", Bool), Opt("max-workers", Int), Opt("max-chunk", Int));

    private static QapiMember[] Common() =>
    [
        Opt("job-id", Str), Req("device", Str), Req("sync", MirrorSyncMode), Opt("speed", Int), Opt("bitmap", Str),
        Opt("bitmap-mode", BitmapSyncMode), Opt("compress", Bool), Opt("on-source-error", BlockdevOnError),
        Opt("on-target-error", BlockdevOnError), Opt("auto-finalize", Bool), Opt("auto-dismiss", Bool),
        Opt("filter-node-name", Str), Opt("x-perf", BackupPerf),
    ];

    public static QapiObject BlockdevBackup { get; } = new("BlockdevBackup", [.. Common(), Req("target", Str)]);

    public static QapiObject DriveBackup { get; } = new("DriveBackup",
        [.. Common(), Req("target", Str), Opt("format", Str), Opt("mode", SnapshotTypes.NewImageMode)]);

    public static QapiObject BlockJobInfo { get; } = new("BlockJobInfo",
        Req("type", Str), Req("device", Str), Req("len", Int), Req("offset", Int), Req("busy", Bool), Req("paused", Bool),
        Req("speed", Int), Req("io-status", BlockDeviceIoStatus), Req("ready", Bool), Req("status", JobTypes.JobStatus),
        Req("auto-finalize", Bool), Req("auto-dismiss", Bool), Opt("error", Str));

    public static QapiObject DeviceArgs(string command) => new($"q_obj_{command}-arg", Req("device", Str));

    public static QapiObject IdArgs(string command) => new($"q_obj_{command}-arg", Req("id", Str));

    public static QapiObject CancelArgs { get; } = new("q_obj_block-job-cancel-arg", Req("device", Str), Opt("force", Bool));

    public static QapiObject SetSpeedArgs { get; } = new("q_obj_block-job-set-speed-arg", Req("device", Str), Req("speed", Int));

    // ---- events ------------------------------------------------------------------------------------------

    private static QapiMember[] Progress() =>
        [Req("type", JobTypes.JobType), Req("device", Str), Req("len", Int), Req("offset", Int), Req("speed", Int)];

    public static QapiObject BlockJobCancelledData { get; } = new("q_obj_BLOCK_JOB_CANCELLED-arg", Progress());

    public static QapiObject BlockJobCompletedData { get; } = new("q_obj_BLOCK_JOB_COMPLETED-arg", [.. Progress(), Opt("error", Str)]);

    public static QapiObject BlockJobErrorData { get; } = new("q_obj_BLOCK_JOB_ERROR-arg",
        Req("device", Str), Req("operation", new QapiEnum("IoOperationType", "read", "write")),
        Req("action", new QapiEnum("BlockErrorAction", "ignore", "report", "stop")));

    public static QapiObject BlockJobPendingData { get; } = new("q_obj_BLOCK_JOB_PENDING-arg", Req("type", JobTypes.JobType), Req("id", Str));

    public static QapiObject BlockJobReadyData { get; } = new("q_obj_BLOCK_JOB_READY-arg", Progress());
}
