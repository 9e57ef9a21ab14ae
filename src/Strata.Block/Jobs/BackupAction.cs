using System.Text.Json.Nodes;
using Strata.Block.Drivers;
using Strata.Block.Snapshots;
using Strata.Block.Transactions;
using Strata.Images;
using Strata.Images.Format;
using Strata.Images.Qcow2;
using Strata.Images.Storage;

namespace Strata.Block.Jobs;

/// <summary>drive-backup's own members: the target file, its format and how it comes to exist.</summary>
public sealed record DriveBackupTarget(string File, string? Format = null, NewImageMode Mode = NewImageMode.AbsolutePaths);

/// <summary>
/// blockdev-backup and drive-backup as transaction actions (blockdev.c's blockdev_backup_* and drive_backup_*): prepare
/// finds the nodes (drive-backup creates and opens its target first, as QEMU's drive_backup_prepare does), creates the
/// job with its filter; commit starts it; abort cancels it. With completion-mode grouped every backup job of the
/// transaction joins one job transaction, so one failure fails them all. The single commands are transactions of one.
/// </summary>
public sealed class BackupAction : ITransactionAction
{
    private readonly string _device;
    private readonly string? _targetNode;
    private readonly DriveBackupTarget? _drive;
    private readonly BackupOptions _options;

    /// <summary>blockdev-backup: the target is a node.</summary>
    public BackupAction(string device, string target, BackupOptions options)
    {
        _device = device;
        _targetNode = target;
        _options = options;
    }

    /// <summary>drive-backup: the target is a file.</summary>
    public BackupAction(string device, DriveBackupTarget target, BackupOptions options)
    {
        _device = device;
        _drive = target;
        _options = options;
    }

    public string Kind => _drive is null ? "blockdev-backup" : "drive-backup";

    /// <summary>The job, once prepared.</summary>
    public BackupJob? Job { get; private set; }

    public async ValueTask PrepareAsync(BlockTransaction tx, CancellationToken ct)
    {
        var graph = tx.Graph;
        var registry = tx.Jobs ?? throw new InvalidOperationException("a backup needs the transaction's job registry");
        var source = graph.Lookup(_device, _device);
        var options = _options;
        BlockNode target;
        bool owns = false;
        if (_drive is null)
        {
            target = graph.Lookup(_targetNode, _targetNode);
            await tx.DrainJobsAsync(JobsAbove(registry, source)).ConfigureAwait(false);
        }
        else
        {
            await tx.DrainJobsAsync(JobsAbove(registry, source)).ConfigureAwait(false);
            (target, options) = await OpenDriveTargetAsync(graph, source, _drive, options, ct).ConfigureAwait(false);
            owns = true;
        }

        try
        {
            Job = BackupJob.Create(registry, graph, source, target, options, tx.JobGroup, owns);
        }
        catch
        {
            if (owns)
                await graph.ReleaseIfUnusedAsync(target).ConfigureAwait(false);
            throw;
        }

        var job = Job;
        // The job joins a drained graph: it starts paused and runs once the transaction lets go (QEMU's drained_end).
        tx.AddDrainedJob(job);
        tx.Register(
            commit: () => registry.Start(job),
            abort: () =>
            {
                // job_cancel_sync on a job never started: it aborts at once (its group with it).
                if (job.Status is not (JobStatus.Null or JobStatus.Concluded))
                    job.Cancel(force: true);
                return ValueTask.CompletedTask;
            });
    }

    /// <summary>The backups whose filters sit above <paramref name="node"/>: draining it pauses them (bdrv_parent_drained_begin).</summary>
    private static IEnumerable<Job> JobsAbove(JobRegistry registry, BlockNode node)
    {
        var filters = new HashSet<BlockNode>(ReferenceEqualityComparer.Instance);
        var stack = new Stack<BlockNode>();
        stack.Push(node);
        while (stack.Count > 0)
        {
            foreach (var e in stack.Pop().Parents)
            {
                if (e.Parent is BlockNode p && filters.Add(p))
                    stack.Push(p);
            }
        }
        return registry.Jobs.OfType<BackupJob>().Where(j => filters.Contains(j.Filter));
    }

    /// <summary>
    /// drive_backup_prepare: sync=top falls back to full without a backing image; the target file is created (unless
    /// mode=existing) with the source's backing (top) or the source itself (none) as its backing file, then opened with
    /// discard=unmap and detect-zeroes=unmap; for sync=none the live source becomes its backing node.
    /// </summary>
    private static async ValueTask<(BlockNode, BackupOptions)> OpenDriveTargetAsync(BlockGraph graph, BlockNode source, DriveBackupTarget d,
        BackupOptions options, CancellationToken ct)
    {
        string? format = d.Format ?? (d.Mode != NewImageMode.Existing ? source.Driver : null);
        BackupJob.CheckNotInBackup(source);

        BlockNode? backing = null;
        if (options.Sync == MirrorSyncMode.Top)
        {
            backing = source.BackingChild;
            if (backing is null)
                options = options with { Sync = MirrorSyncMode.Full };
        }
        bool sourceAsBacking = options.Sync == MirrorSyncMode.None;
        if (sourceAsBacking)
            backing = source;

        long size = source.Size;
        if (d.Mode != NewImageMode.Existing)
            await CreateTargetAsync(graph, d, format!, backing, size, ct).ConfigureAwait(false);

        format ??= await ProbeAsync(d.File, ct).ConfigureAwait(false);
        var o = new JsonObject
        {
            ["driver"] = format,
            ["file"] = new JsonObject { ["driver"] = "file", ["filename"] = d.File },
            ["discard"] = "unmap",
            ["detect-zeroes"] = "unmap",
        };
        // The source's own backing node serves the target too (QEMU opens the file a second time, read-only).
        if (format == "qcow2")
        {
            if (sourceAsBacking)
                o["backing"] = null;
            else if (backing is not null && d.Mode != NewImageMode.Existing)
                o["backing"] = backing.NodeName;
        }
        var target = await graph.OpenUnownedAsync(o, source.Settings with { ReadOnly = false, ForceShare = false, DetectZeroes = DetectZeroes.Unmap, Unmap = true }, ct)
            .ConfigureAwait(false);
        if (sourceAsBacking)
        {
            if (target is not Qcow2Node q)
            {
                await graph.ReleaseIfUnusedAsync(target).ConfigureAwait(false);
                throw new BlockException($"Driver '{format}' of node '{target.NodeName}' does not support backing files");
            }
            try
            {
                BlockGraph.AttachBacking(q, source);
            }
            catch
            {
                await graph.ReleaseIfUnusedAsync(target).ConfigureAwait(false);
                throw;
            }
        }
        return (target, options);
    }

    /// <summary>bdrv_img_create for drive-backup: qcow2 (with or without a backing file) or raw.</summary>
    private static async ValueTask CreateTargetAsync(BlockGraph graph, DriveBackupTarget d, string format, BlockNode? backing, long size, CancellationToken ct)
    {
        if (backing is not null)
        {
            string backingName = d.Mode == NewImageMode.RelativePaths
                ? OverlayFile.RelativeBackingName(d.File, backing.FileName)
                : NodeFilename.Of(backing, graph);
            OverlayFile.Validate(d.File, format, backingName);
            await OverlayFile.CreateAsync(d.File, format, backingName, backing.Driver, size, ct).ConfigureAwait(false);
            return;
        }

        if (!OverlayFile.IsKnownFormat(format))
            throw new BlockException($"Unknown file format '{format}'");
        if (format is not ("qcow2" or "raw"))
            throw new BlockException($"strata-daemon cannot create '{format}' images (only qcow2 and raw)");
        FileStorage storage;
        try
        {
            storage = FileStorage.Create(d.File, new FileStorageOptions(ReadOnly: false));
        }
        catch (IOException e)
        {
            throw new BlockException(e.Message);
        }
        catch (UnauthorizedAccessException)
        {
            throw new BlockException($"Could not create '{d.File}': Permission denied");
        }
        await using (storage.ConfigureAwait(false))
        {
            try
            {
                long rounded = BlockNode.WholeSectors(size);
                if (format == "raw")
                {
                    await storage.SetLengthAsync(rounded, Preallocation.Off, ct).ConfigureAwait(false);
                }
                else
                {
                    var image = await Qcow2Creator.CreateAsync(storage, new Qcow2CreateOptions { Size = rounded },
                        new Qcow2OpenOptions { OwnsStorage = false }, ct).ConfigureAwait(false);
                    await image.DisposeAsync().ConfigureAwait(false);
                }
            }
            catch (ImageException e)
            {
                throw new BlockException($"Could not create '{d.File}': {e.Message}", BlockErrorKind.Generic, e);
            }
        }
    }

    /// <summary>mode=existing without a format: the format is probed, as bdrv_open does.</summary>
    private static async ValueTask<string> ProbeAsync(string path, CancellationToken ct)
    {
        try
        {
            var f = FileStorage.Open(path, new FileStorageOptions(ReadOnly: true));
            await using (f.ConfigureAwait(false))
                return await ImageOpener.ProbeAsync(f, ct).ConfigureAwait(false);
        }
        catch (IOException e)
        {
            throw new BlockException($"Could not open '{path}': {ReasonOf(e.Message)}");
        }
    }

    private static string ReasonOf(string message)
    {
        int i = message.LastIndexOf("': ", StringComparison.Ordinal);
        return i >= 0 ? message[(i + 3)..] : message;
    }
}
