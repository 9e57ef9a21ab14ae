using System.Buffers;
using System.Text.Json;
using Strata.Block;
using Strata.Block.Jobs;
using Strata.Block.Snapshots;
using Strata.Block.Transactions;
using JobBitmapMode = Strata.Block.Jobs.BitmapSyncMode;
using JobOnError = Strata.Block.Jobs.BlockdevOnError;
using JobSyncMode = Strata.Block.Jobs.MirrorSyncMode;
using TargetMode = Strata.Block.Snapshots.NewImageMode;

namespace Strata.Qmp.Server.Commands;

/// <summary>
/// query-block-jobs, the block-job-* verbs (blockdev.c and blockjob.c: they name a block job by id and say
/// "Block job 'x' not found" with class DeviceNotActive), blockdev-backup and drive-backup (each a transaction of one
/// action, as in QEMU), and the two backup actions of transaction.
/// </summary>
internal static class BackupCommands
{
    public static ValueTask<JsonElement> QueryBlockJobsAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        var buffer = new ArrayBufferWriter<byte>(512);
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartArray();
            foreach (var job in c.Daemon.Jobs.Jobs)
            {
                if (job is not BlockJob b || b.IsInternal)
                    continue;
                var s = b.Snapshot();
                w.WriteStartObject();
                w.WriteString("type", s.Type);
                w.WriteString("device", s.Device);
                w.WriteNumber("len", s.Len);
                w.WriteNumber("offset", s.Offset);
                w.WriteBoolean("busy", s.Busy);
                w.WriteBoolean("paused", s.Paused);
                w.WriteNumber("speed", s.Speed);
                w.WriteString("io-status", IoStatusName(s.IoStatus));
                w.WriteBoolean("ready", s.Ready);
                w.WriteString("status", JobTransitions.Name(s.Status));
                w.WriteBoolean("auto-finalize", s.AutoFinalize);
                w.WriteBoolean("auto-dismiss", s.AutoDismiss);
                if (s.Error is { } e)
                    w.WriteString("error", e);
                w.WriteEndObject();
            }
            w.WriteEndArray();
        }
        using var doc = JsonDocument.Parse(buffer.WrittenMemory);
        return ValueTask.FromResult(doc.RootElement.Clone());
    }

    public static string IoStatusName(BlockIoStatus s) => s switch
    {
        BlockIoStatus.Failed => "failed",
        BlockIoStatus.Nospace => "nospace",
        _ => "ok",
    };

    /// <summary>find_block_job.</summary>
    private static BlockJob Find(QmpCommandContext c, string id) =>
        c.Daemon.Jobs.Find(id) is BlockJob { IsInternal: false } b
            ? b
            : throw new QmpException(new QmpError(QmpErrorClass.DeviceNotActive, $"Block job '{id}' not found"));

    private static ValueTask<JsonElement> Verb(QmpCommandContext c, string id, Action<BlockJob> verb, bool settle = false) =>
        JobCommands.RunVerbAsync(c, Find(c, id), verb, settle);

    public static ValueTask<JsonElement> SetSpeedAsync(QmpCommandContext c, JsonElement args, CancellationToken ct) =>
        Verb(c, args.ReqStr("device"), j => j.SetSpeed(args.Long("speed")!.Value));

    public static ValueTask<JsonElement> CancelAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        string device = args.ReqStr("device");
        bool force = args.Bool("force") ?? false;
        return Verb(c, device, j =>
        {
            if (j.IsUserPaused && !force)
                throw new BlockException($"The block job for device '{device}' is currently paused");
            j.UserCancel(force);
        }, settle: true);
    }

    public static ValueTask<JsonElement> PauseAsync(QmpCommandContext c, JsonElement args, CancellationToken ct) =>
        Verb(c, args.ReqStr("device"), j => j.UserPause());

    public static ValueTask<JsonElement> ResumeAsync(QmpCommandContext c, JsonElement args, CancellationToken ct) =>
        Verb(c, args.ReqStr("device"), j => j.UserResume());

    public static ValueTask<JsonElement> CompleteAsync(QmpCommandContext c, JsonElement args, CancellationToken ct) =>
        Verb(c, args.ReqStr("device"), j => j.UserComplete());

    public static ValueTask<JsonElement> FinalizeAsync(QmpCommandContext c, JsonElement args, CancellationToken ct) =>
        Verb(c, args.ReqStr("id"), j => j.UserFinalize());

    public static ValueTask<JsonElement> DismissAsync(QmpCommandContext c, JsonElement args, CancellationToken ct) =>
        Verb(c, args.ReqStr("id"), j => j.UserDismiss());

    // ---- backup ---------------------------------------------------------------------------------------------

    public static async ValueTask<JsonElement> BlockdevBackupAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        await RunAsync(c, BlockdevBackupAction(args), ct).ConfigureAwait(false);
        return await Args.Empty.ConfigureAwait(false);
    }

    public static async ValueTask<JsonElement> DriveBackupAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        await RunAsync(c, DriveBackupAction(args), ct).ConfigureAwait(false);
        return await Args.Empty.ConfigureAwait(false);
    }

    private static async ValueTask RunAsync(QmpCommandContext c, ITransactionAction action, CancellationToken ct)
    {
        try
        {
            await BlockTransaction.RunAsync(c.Daemon.Graph, [action], ct: ct, jobs: c.Daemon.Jobs).ConfigureAwait(false);
        }
        finally
        {
            await SettleAsync(c, [action]).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// After a transaction: backups with nothing to copy finish before the reply (QEMU runs them to their end without
    /// waiting on I/O), and what finished jobs held is closed.
    /// </summary>
    public static async ValueTask SettleAsync(QmpCommandContext c, IEnumerable<ITransactionAction> actions)
    {
        foreach (var a in actions)
        {
            if (a is BackupAction { Job: { NothingToCopy: true } job } && job.Status != Strata.Block.Jobs.JobStatus.Null)
                await c.Daemon.Jobs.SettleAsync(job).ConfigureAwait(false);
        }
        await c.Daemon.Jobs.RunDeferredAsync().ConfigureAwait(false);
    }

    public static ITransactionAction BlockdevBackupAction(JsonElement a) =>
        new BackupAction(a.ReqStr("device"), a.ReqStr("target"), Options(a));

    public static ITransactionAction DriveBackupAction(JsonElement a) =>
        new BackupAction(a.ReqStr("device"), new DriveBackupTarget(a.ReqStr("target"), a.Str("format"), a.Str("mode") switch
        {
            "existing" => TargetMode.Existing,
            "relative-paths" => TargetMode.RelativePaths,
            _ => TargetMode.AbsolutePaths,
        }), Options(a));

    /// <summary>BackupCommon with do_backup_common's defaults.</summary>
    private static BackupOptions Options(JsonElement a) => new()
    {
        JobId = a.Str("job-id"),
        Sync = a.ReqStr("sync") switch
        {
            "top" => JobSyncMode.Top,
            "full" => JobSyncMode.Full,
            "none" => JobSyncMode.None,
            "incremental" => JobSyncMode.Incremental,
            _ => JobSyncMode.Bitmap,
        },
        Speed = a.Long("speed") ?? 0,
        Bitmap = a.Str("bitmap"),
        BitmapMode = a.Str("bitmap-mode") switch
        {
            null => null,
            "never" => JobBitmapMode.Never,
            "always" => JobBitmapMode.Always,
            _ => JobBitmapMode.OnSuccess,
        },
        Compress = a.Bool("compress") ?? false,
        OnSourceError = OnError(a.Str("on-source-error")),
        OnTargetError = OnError(a.Str("on-target-error")),
        AutoFinalize = a.Bool("auto-finalize") ?? true,
        AutoDismiss = a.Bool("auto-dismiss") ?? true,
        FilterNodeName = a.Str("filter-node-name"),
    };

    private static JobOnError OnError(string? s) => s switch
    {
        "ignore" => JobOnError.Ignore,
        "enospc" => JobOnError.Enospc,
        "stop" => JobOnError.Stop,
        "auto" => JobOnError.Auto,
        _ => JobOnError.Report,
    };
}
