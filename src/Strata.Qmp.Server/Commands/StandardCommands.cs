using Strata.Qmp.Server.Schema;

namespace Strata.Qmp.Server.Commands;

/// <summary>The commands strata-daemon implements, registered one by one (the table also feeds query-commands and query-qmp-schema).</summary>
public static class StandardCommands
{
    public static QmpCommandTable Create()
    {
        var t = new QmpCommandTable();
        var empty = QapiObject.Empty;

        // control
        t.Add(new("qmp_capabilities", QmpTypes.QmpCapabilitiesArgs, empty, ControlCommands.QmpCapabilitiesAsync));
        t.Add(new("query-version", empty, QmpTypes.VersionInfo, ControlCommands.QueryVersionAsync));
        t.Add(new("query-commands", empty, new QapiArray(QmpTypes.CommandInfo), ControlCommands.QueryCommandsAsync));
        t.Add(new("quit", empty, empty, ControlCommands.QuitAsync));
        t.Add(new("query-qmp-schema", empty, new QapiArray(QmpTypes.SchemaInfo), ControlCommands.QueryQmpSchemaAsync));

        // block nodes
        t.Add(new("query-block", empty, new QapiArray(QmpTypes.BlockInfo), BlockCommands.QueryBlockAsync));
        t.Add(new("query-blockstats", QmpTypes.QueryBlockstatsArgs, new QapiArray(QmpTypes.BlockStats), BlockCommands.QueryBlockstatsAsync));
        t.Add(new("block_resize", QmpTypes.BlockResizeArgs, empty, BlockCommands.BlockResizeAsync));
        t.Add(new("query-named-block-nodes", QmpTypes.QueryNamedBlockNodesArgs, new QapiArray(QmpTypes.BlockDeviceInfo),
            BlockCommands.QueryNamedBlockNodesAsync));
        t.Add(new("x-debug-query-block-graph", empty, QmpTypes.XDbgBlockGraph, BlockCommands.QueryBlockGraphAsync) { Features = ["unstable"] });
        t.Add(new("blockdev-add", QmpTypes.BlockdevOptions, empty, BlockCommands.BlockdevAddAsync));
        t.Add(new("blockdev-del", QmpTypes.BlockdevDelArgs, empty, BlockCommands.BlockdevDelAsync));

        // live external and internal snapshots, transactions
        t.Add(new("blockdev-snapshot-sync", SnapshotTypes.BlockdevSnapshotSync, empty, SnapshotCommands.BlockdevSnapshotSyncAsync));
        t.Add(new("blockdev-snapshot", SnapshotTypes.BlockdevSnapshot, empty, SnapshotCommands.BlockdevSnapshotAsync));
        t.Add(new("blockdev-snapshot-internal-sync", SnapshotTypes.BlockdevSnapshotInternal, SnapshotTypes.BlockdevSnapshotInternalResult,
            SnapshotCommands.BlockdevSnapshotInternalSyncAsync));
        t.Add(new("blockdev-snapshot-delete-internal-sync", SnapshotTypes.BlockdevSnapshotDeleteInternalArgs, QmpTypes.SnapshotInfo,
            SnapshotCommands.BlockdevSnapshotDeleteInternalSyncAsync));
        t.Add(new("transaction", TransactionCommands.Arguments, empty, TransactionCommands.TransactionAsync));

        // live dirty bitmaps
        t.Add(new("block-dirty-bitmap-add", BitmapTypes.BlockDirtyBitmapAdd, empty, BitmapCommands.AddAsync));
        t.Add(new("block-dirty-bitmap-remove", BitmapTypes.BlockDirtyBitmap, empty, BitmapCommands.RemoveAsync));
        t.Add(new("block-dirty-bitmap-clear", BitmapTypes.BlockDirtyBitmap, empty, BitmapCommands.ClearAsync));
        t.Add(new("block-dirty-bitmap-enable", BitmapTypes.BlockDirtyBitmap, empty, BitmapCommands.EnableAsync));
        t.Add(new("block-dirty-bitmap-disable", BitmapTypes.BlockDirtyBitmap, empty, BitmapCommands.DisableAsync));
        t.Add(new("block-dirty-bitmap-merge", BitmapTypes.BlockDirtyBitmapMerge, empty, BitmapCommands.MergeAsync));
        t.Add(new("x-debug-block-dirty-bitmap-sha256", BitmapTypes.BlockDirtyBitmap, BitmapTypes.BlockDirtyBitmapSha256,
            BitmapCommands.Sha256Async) { Features = ["unstable"] });

        // NBD server and exports
        t.Add(new("nbd-server-start", QmpTypes.NbdServerStartArgs, empty, ExportCommands.NbdServerStartAsync));
        t.Add(new("nbd-server-add", QmpTypes.NbdServerAddArgs, empty, ExportCommands.NbdServerAddAsync) { Features = ["deprecated"] });
        t.Add(new("nbd-server-remove", QmpTypes.NbdServerRemoveArgs, empty, ExportCommands.NbdServerRemoveAsync) { Features = ["deprecated"] });
        t.Add(new("nbd-server-stop", empty, empty, ExportCommands.NbdServerStopAsync));
        t.Add(new("block-export-add", QmpTypes.BlockExportOptions, empty, ExportCommands.BlockExportAddAsync));
        t.Add(new("block-export-del", QmpTypes.BlockExportDelArgs, empty, ExportCommands.BlockExportDelAsync));
        t.Add(new("query-block-exports", empty, new QapiArray(QmpTypes.BlockExportInfo), ExportCommands.QueryBlockExportsAsync));

        // jobs
        t.Add(new("blockdev-create", JobTypes.BlockdevCreateArgs, empty, CreateCommands.BlockdevCreateAsync));
        t.Add(new("query-jobs", empty, new QapiArray(JobTypes.JobInfo), JobCommands.QueryJobsAsync));
        t.Add(new("job-pause", JobTypes.JobIdArgs("job-pause"), empty, JobCommands.JobPauseAsync));
        t.Add(new("job-resume", JobTypes.JobIdArgs("job-resume"), empty, JobCommands.JobResumeAsync));
        t.Add(new("job-cancel", JobTypes.JobIdArgs("job-cancel"), empty, JobCommands.JobCancelAsync));
        t.Add(new("job-complete", JobTypes.JobIdArgs("job-complete"), empty, JobCommands.JobCompleteAsync));
        t.Add(new("job-dismiss", JobTypes.JobIdArgs("job-dismiss"), empty, JobCommands.JobDismissAsync));
        t.Add(new("job-finalize", JobTypes.JobIdArgs("job-finalize"), empty, JobCommands.JobFinalizeAsync));

        // block jobs and backup
        t.Add(new("query-block-jobs", empty, new QapiArray(BackupTypes.BlockJobInfo), BackupCommands.QueryBlockJobsAsync));
        t.Add(new("block-job-set-speed", BackupTypes.SetSpeedArgs, empty, BackupCommands.SetSpeedAsync));
        t.Add(new("block-job-cancel", BackupTypes.CancelArgs, empty, BackupCommands.CancelAsync));
        t.Add(new("block-job-pause", BackupTypes.DeviceArgs("block-job-pause"), empty, BackupCommands.PauseAsync));
        t.Add(new("block-job-resume", BackupTypes.DeviceArgs("block-job-resume"), empty, BackupCommands.ResumeAsync));
        t.Add(new("block-job-complete", BackupTypes.DeviceArgs("block-job-complete"), empty, BackupCommands.CompleteAsync));
        t.Add(new("block-job-finalize", BackupTypes.IdArgs("block-job-finalize"), empty, BackupCommands.FinalizeAsync));
        t.Add(new("block-job-dismiss", BackupTypes.IdArgs("block-job-dismiss"), empty, BackupCommands.DismissAsync));
        t.Add(new("blockdev-backup", BackupTypes.BlockdevBackup, empty, BackupCommands.BlockdevBackupAsync));
        t.Add(new("drive-backup", BackupTypes.DriveBackup, empty, BackupCommands.DriveBackupAsync));
        return t;
    }
}
