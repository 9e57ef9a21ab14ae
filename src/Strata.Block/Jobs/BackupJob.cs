using Strata.Block.Drivers;
using Strata.Images.Bitmaps;

namespace Strata.Block.Jobs;

/// <summary>QAPI MirrorSyncMode, in QEMU's order.</summary>
public enum MirrorSyncMode { Top, Full, None, Incremental, Bitmap }

/// <summary>QAPI BitmapSyncMode, in QEMU's order.</summary>
public enum BitmapSyncMode { OnSuccess, Never, Always }

/// <summary>The members blockdev-backup and drive-backup share (QAPI BackupCommon), defaults applied by the caller.</summary>
public sealed record BackupOptions
{
    public string? JobId { get; init; }
    public MirrorSyncMode Sync { get; init; }
    public long Speed { get; init; }
    public string? Bitmap { get; init; }
    public BitmapSyncMode? BitmapMode { get; init; }
    public bool Compress { get; init; }
    public BlockdevOnError OnSourceError { get; init; } = BlockdevOnError.Report;
    public BlockdevOnError OnTargetError { get; init; } = BlockdevOnError.Report;
    public bool AutoFinalize { get; init; } = true;
    public bool AutoDismiss { get; init; } = true;
    public string? FilterNodeName { get; init; }
}

/// <summary>
/// QEMU's backup job (block/backup.c): a copy-before-write filter goes above the source so that the target receives
/// the source as it was when the job started; the job then copies in the background what its sync mode asks for
/// (full: everything, top: what the top layer allocates, bitmap: what the bitmap marks, none: nothing, and it runs
/// until cancelled). With a bitmap, writes during the job go to a successor bitmap, which replaces or is merged back
/// into the user's bitmap at the end as <see cref="BitmapSyncMode"/> says.
/// </summary>
public sealed class BackupJob : BlockJob
{
    /// <summary>
    /// Copy tasks in flight in the background pass: block-copy's default max-workers. As many as QEMU's, so that an error
    /// stops the same copies (a call launches every task it may before the first failure is seen).
    /// </summary>
    private const int MaxWorkers = 64;

    private readonly BlockGraph _graph;
    private readonly BlockNode _source;
    private readonly BlockNode _target;
    private readonly bool _ownsTarget;
    private readonly CopyBeforeWriteNode _cbw;
    private readonly BlockCopy _copy;
    private readonly MirrorSyncMode _sync;
    private readonly DirtyBitmap? _syncBitmap;
    private readonly DirtyBitmap? _successor;
    private readonly BitmapSyncMode _bitmapMode;
    private readonly BlockdevOnError _onSourceError;
    private readonly BlockdevOnError _onTargetError;
    private bool _cleaned;

    private BackupJob(string? id, BackupOptions o, BlockGraph graph, BlockNode source, BlockNode target, bool ownsTarget,
        CopyBeforeWriteNode cbw, DirtyBitmap? syncBitmap, DirtyBitmap? successor)
        : base(id, o.Speed, o.AutoFinalize, o.AutoDismiss)
    {
        _graph = graph;
        _source = source;
        _target = target;
        _ownsTarget = ownsTarget;
        _cbw = cbw;
        _copy = cbw.Copy;
        _sync = o.Sync;
        _syncBitmap = syncBitmap;
        _successor = successor;
        _bitmapMode = o.BitmapMode ?? BitmapSyncMode.OnSuccess;
        _onSourceError = o.OnSourceError;
        _onTargetError = o.OnTargetError;
        _copy.Progress = ProgressUpdate;
        _copy.Skipped = n => ProgressIncreaseRemaining(-n);
    }

    public override string Type => "backup";

    /// <summary>
    /// As qsd behaves: a cancel completes the job before its reply when no copy is in flight and the copy pass has
    /// been paused since it began (a restarted block-copy call) or there is none (sync=none); a job still in its first
    /// call (even one sleeping for its speed) finishes after the reply.
    /// </summary>
    public override bool StopsAtOnce => _copy.InFlightBytes == 0 && (_sync == MirrorSyncMode.None || _pausedInPass) && !_stoppedOnError;

    /// <summary>Paused by an error policy (stop): a cancel then lets a last block-copy call run first, as backup_loop does.</summary>
    private volatile bool _stoppedOnError;

    private volatile bool _passStarted;
    private volatile bool _pausedInPass;

    protected override void OnPausing()
    {
        if (_passStarted)
            _pausedInPass = true;
    }

    /// <summary>Nothing to copy (an empty bitmap): the run ends without I/O, before the command's reply in QEMU.</summary>
    public bool NothingToCopy => _sync != MirrorSyncMode.None && !_copiedAny && _copy.CopyBitmap.DirtyGranules == 0;

    /// <summary>The pass started a task: the bitmap was not empty, even once every cluster is claimed.</summary>
    private volatile bool _copiedAny;

    public BlockNode Source => _source;

    public BlockNode Target => _target;

    /// <summary>The copy-before-write filter above the source (in the graph while the job lives).</summary>
    public CopyBeforeWriteNode Filter => _cbw;

    /// <summary>
    /// do_backup_common and backup_job_create: QEMU's checks in its order and words, then the filter goes above the
    /// source and the job is created (not started) in <paramref name="transaction"/>. Call with the graph drained.
    /// </summary>
    /// <param name="ownsTarget">The target was opened for this job (drive-backup): it is closed when the job ends.</param>
    public static BackupJob Create(JobRegistry registry, BlockGraph graph, BlockNode source, BlockNode target, BackupOptions o,
        JobTransaction? transaction = null, bool ownsTarget = false)
    {
        var sync = o.Sync;
        var bitmapMode = o.BitmapMode;
        if (sync is MirrorSyncMode.Bitmap or MirrorSyncMode.Incremental && o.Bitmap is null)
            throw new BlockException($"must provide a valid bitmap name for '{SyncName(sync)}' sync mode");
        if (sync == MirrorSyncMode.Incremental)
        {
            if (bitmapMode is { } m && m != BitmapSyncMode.OnSuccess)
                throw new BlockException($"Bitmap sync mode must be 'on-success' when using sync mode '{SyncName(sync)}'");
            sync = MirrorSyncMode.Bitmap;
            bitmapMode = BitmapSyncMode.OnSuccess;
        }

        DirtyBitmap? bitmap = null;
        if (o.Bitmap is { } name)
        {
            bitmap = source.DirtyBitmaps.Find(name) ?? throw new BlockException($"Bitmap '{name}' could not be found");
            if (bitmapMode is null)
                throw new BlockException("Bitmap sync mode must be given when providing a bitmap");
            CheckBitmap(bitmap, BitmapCheck.AllowReadOnly);
            if (sync == MirrorSyncMode.None)
                throw new BlockException($"sync mode '{SyncName(sync)}' does not produce meaningful bitmap outputs");
            if (bitmapMode == BitmapSyncMode.Never && sync != MirrorSyncMode.Bitmap)
                throw new BlockException($"Bitmap sync mode 'never' has no meaningful effect when combined with sync mode '{SyncName(sync)}'");
        }
        else if (bitmapMode is not null)
            throw new BlockException("Cannot specify bitmap sync mode without a bitmap");

        // backup_job_create
        if (ReferenceEquals(source, target))
            throw new BlockException("Source and target cannot be the same");
        if (o.Compress && target.FormatImage is not Strata.Images.Qcow2.Qcow2Image)
            throw new BlockException("Compression is not supported for this drive ");
        CheckNotInBackup(source);
        CheckNotInBackup(target);

        DirtyBitmap? successor = null;
        if (bitmap is not null)
        {
            if (bitmapMode != BitmapSyncMode.Never)
                CheckBitmap(bitmap, BitmapCheck.Default);
            successor = CreateSuccessor(source.DirtyBitmaps, bitmap);
        }

        CopyBeforeWriteNode? cbw = null;
        BackupJob? created = null;
        try
        {
            if (target.Size != source.Size)
                throw new BlockException("Source and target image have different sizes");
            var copy = new BlockCopy(source, target, o.Compress);
            cbw = graph.InsertCopyBeforeWrite(source, target, o.FilterNodeName, copy);
            var options = o with { Sync = sync, BitmapMode = bitmapMode };
            // Without a job-id QEMU takes the filter's device name, which is empty in qemu-storage-daemon.
            var job = new BackupJob(o.JobId ?? "", options, graph, source, target, ownsTarget, cbw, bitmap, successor);
            registry.Create(job, transaction);
            created = job;
            CheckSpeed(o.Speed);
            job.InitCopyBitmap();
            // block_job_add_bdrv's op blockers: the filter and the target belong to the job now.
            cbw.JobBlocker = target.JobBlocker = "backup";
            return job;
        }
        catch
        {
            created?.EarlyFail();
            if (successor is not null)
                Reclaim(source.DirtyBitmaps, bitmap!, successor);
            if (cbw is not null)
                graph.RemoveCopyBeforeWrite(cbw);
            throw;
        }
    }

    public static string SyncName(MirrorSyncMode m) => m switch
    {
        MirrorSyncMode.Top => "top",
        MirrorSyncMode.Full => "full",
        MirrorSyncMode.None => "none",
        MirrorSyncMode.Incremental => "incremental",
        _ => "bitmap",
    };

    private static void CheckBitmap(DirtyBitmap bitmap, BitmapCheck flags)
    {
        try
        {
            DirtyBitmapSet.Check(bitmap, flags);
        }
        catch (BitmapException e)
        {
            throw new BlockException(e.Message, BlockErrorKind.Generic, e) { Hint = e.Hint };
        }
    }

    /// <summary>QEMU's op blockers: a node already in a backup (its source under a filter, or its target) is busy.</summary>
    internal static void CheckNotInBackup(BlockNode node) => node.CheckNotBlocked();

    /// <summary>bdrv_dirty_bitmap_create_successor: the bitmap freezes (disabled, busy); a successor records from now on.</summary>
    private static DirtyBitmap CreateSuccessor(DirtyBitmapSet set, DirtyBitmap bitmap)
    {
        if (bitmap.Busy)
            throw new BlockException("Cannot create a successor for a bitmap currently in use");
        var successor = new DirtyBitmap(bitmap.Size, bitmap.Granularity) { Enabled = bitmap.Enabled };
        set.Add(successor);
        bitmap.Enabled = false;
        bitmap.Busy = true;
        set.RefreshEnabled();
        return successor;
    }

    /// <summary>bdrv_reclaim_dirty_bitmap: the successor's bits go back into the bitmap, which thaws.</summary>
    private static void Reclaim(DirtyBitmapSet set, DirtyBitmap bitmap, DirtyBitmap successor)
    {
        bitmap.Merge(successor);
        bitmap.Enabled = successor.Enabled;
        bitmap.Busy = false;
        set.Remove(successor);
        set.RefreshEnabled();
    }

    /// <summary>bdrv_dirty_bitmap_abdicate: the successor takes the bitmap's name and place; the old bits are gone.</summary>
    private static DirtyBitmap Abdicate(DirtyBitmapSet set, DirtyBitmap bitmap, DirtyBitmap successor)
    {
        successor.Persistent = bitmap.Persistent;
        bitmap.Persistent = false;
        set.Remove(bitmap);
        successor.Name = bitmap.Name;
        set.RefreshEnabled();
        return successor;
    }

    /// <summary>backup_init_bcs_bitmap: what the background pass copies, and the progress it starts with.</summary>
    private void InitCopyBitmap()
    {
        var bits = _copy.CopyBitmap;
        if (_sync == MirrorSyncMode.Bitmap)
        {
            foreach (var (offset, length, dirty) in _syncBitmap!.Extents())
                if (dirty)
                    bits.SetRange(offset, Math.Min(length, _copy.Length - offset));
        }
        else
        {
            _copy.SkipUnallocated = _sync == MirrorSyncMode.Top;
            bits.SetAll();
        }
        ProgressSetRemaining(bits.DirtyBytes);
    }

    // ---- the run -------------------------------------------------------------------------------------

    protected override Task InFlightIo() => _copy.WhenIdle();

    /// <summary>backup_set_speed: the copy sleeping for the old speed is kicked, whichever way the speed moved.</summary>
    protected override void OnSpeedChanged(bool faster) => WakeFromSleep();

    protected override async Task RunAsync()
    {
        if (_sync == MirrorSyncMode.None)
        {
            // Only guest writes copy anything: the job waits until it is cancelled.
            while (!IsCancelled)
                await SleepAsync(TimeSpan.FromSeconds(1)).ConfigureAwait(false);
            return;
        }

        if (_sync == MirrorSyncMode.Top)
        {
            // backup_run: the clusters the top layer does not allocate leave the copy bitmap first.
            long offset = 0;
            while (offset < _copy.Length && !IsCancelled)
            {
                var (next, dropped) = await _copy.ResetUnallocatedAsync(offset).ConfigureAwait(false);
                if (dropped > 0)
                    ProgressSetRemaining(_copy.CopyBitmap.DirtyBytes + _copy.InFlightBytes);
                offset = next;
                await PausePointAsync().ConfigureAwait(false);
            }
        }

        while (!IsCancelled)
        {
            var failure = await CopyPassAsync().ConfigureAwait(false);
            if (failure is not { } f)
                break;
            var action = ErrorAction(f.IsRead ? _onSourceError : _onTargetError, f.IsRead, f.Error);
            if (action == BlockErrorAction.Report)
                throw new BlockException(ErrorMessage(f.Error), BlockErrorKind.Generic, f.Error);
            // stop: wait here until job-resume (or a cancel); ignore: go round again for what is left.
            _stoppedOnError = action == BlockErrorAction.Stop;
            await PausePointAsync().ConfigureAwait(false);
            if (_stoppedOnError && IsCancelled)
            {
                // backup_loop goes round once more after its pause point: the new block-copy call has started its tasks
                // before the job sees the cancel, and the job ends once they have landed (after the cancel's reply).
                await LastCallAsync().ConfigureAwait(false);
            }
            _stoppedOnError = false;
        }

        if (!IsCancelled)
        {
            await _writeback.ConfigureAwait(false);
            await _target.FlushAsync().ConfigureAwait(false);
        }
    }

    /// <summary>The job's error text: QEMU reports the errno's strerror.</summary>
    private static string ErrorMessage(Exception e) => e is IOException io && io.Message.Length > 0 ? io.Message : e.Message;

    /// <summary>
    /// One pass of block_copy over the whole disk, up to <see cref="MaxWorkers"/> tasks at a time, held to the job's
    /// speed. Returns the first failure after every task of the pass has ended, or null when all went well.
    /// </summary>
    private async ValueTask<(Exception Error, bool IsRead)?> CopyPassAsync()
    {
        var running = new List<Task<(bool Ok, Exception? Error, bool IsRead)>>(MaxWorkers);
        (Exception Error, bool IsRead)? failure = null;
        long cursor = 0;
        _passStarted = true;
        try
        {
            while (failure is null && !IsCancelled)
            {
                if (Speed > 0)
                {
                    long delay = PaceNs(0);
                    if (delay > 0 && _copy.CopyBitmap.DirtyBytes == 0)
                    {
                        // block_copy_dirty_clusters looks for work before it sleeps: with nothing left to start, the
                        // pass ends as soon as its copies land.
                        if (running.Count == 0)
                            break;
                        failure = await ReapOneAsync(running).ConfigureAwait(false);
                        continue;
                    }
                    if (delay > 0)
                    {
                        // Before a long sleep the copies in flight land first, so that the sleeping job can be paused or
                        // cancelled at once, as QEMU's; short sleeps overlap the I/O so the speed holds.
                        if (running.Count > 0 && delay > 10 * RateLimiter.DefaultSliceNs)
                        {
                            failure = await ReapOneAsync(running).ConfigureAwait(false);
                            continue;
                        }
                        await SleepAsync(TimeSpan.FromTicks(delay / 100)).ConfigureAwait(false);
                        continue;
                    }
                }
                else
                {
                    await PausePointAsync().ConfigureAwait(false);
                    if (IsCancelled)
                        break;
                }

                var next = await _copy.StartNextAsync(cursor, CancellationToken.None).ConfigureAwait(false);
                if (next is null)
                {
                    if (running.Count > 0)
                    {
                        failure = await ReapOneAsync(running).ConfigureAwait(false);
                        continue;
                    }
                    if (cursor > 0)
                    {
                        cursor = 0; // a failed task put its clusters back behind the cursor
                        continue;
                    }
                    break;
                }

                var (end, bytes, task) = next.Value;
                _copiedAny = true;
                if (Speed > 0)
                    PaceNs(bytes);
                cursor = end;
                running.Add(task);
                while (running.Count >= MaxWorkers && failure is null && !IsCancelled)
                    failure = await ReapOneAsync(running).ConfigureAwait(false);
            }
        }
        finally
        {
            // Every task ends before the pass does: nothing of the job may touch the target after it finished.
            foreach (var t in running)
            {
                var r = await t.ConfigureAwait(false);
                if (!r.Ok && failure is null)
                    failure = (r.Error!, r.IsRead);
            }
        }
        return failure;
    }

    /// <summary>The tasks a block-copy call starts at once (all it may run together), waited for; failures no longer matter.</summary>
    private async ValueTask LastCallAsync()
    {
        var running = new List<Task<(bool Ok, Exception? Error, bool IsRead)>>(MaxWorkers);
        long cursor = 0;
        while (running.Count < MaxWorkers && await _copy.StartNextAsync(cursor, CancellationToken.None).ConfigureAwait(false) is { } next)
        {
            cursor = next.Next;
            running.Add(next.Task);
        }
        foreach (var t in running)
            await t.ConfigureAwait(false);
    }

    /// <summary>
    /// Waits, idle, for one copy in flight to land and returns its failure; returns null with nothing reaped when a
    /// pause or cancel woke the job first (the copies go on meanwhile, as QEMU's block-copy tasks do).
    /// </summary>
    private async ValueTask<(Exception, bool)?> ReapOneAsync(List<Task<(bool Ok, Exception? Error, bool IsRead)>> running)
    {
        var any = Task.WhenAny(running);
        await YieldUntilAsync(any).ConfigureAwait(false);
        if (!any.IsCompleted)
            return null;
        var done = any.Result;
        running.Remove(done);
        var r = done.Result;
        if (r.Ok)
            HintWriteback();
        return r.Ok ? null : (r.Error!, r.IsRead);
    }

    private const long WritebackStep = 64L << 20;
    private long _hintedAt;
    private Task _writeback = Task.CompletedTask;

    /// <summary>
    /// The target is flushed when the copy ends: every <see cref="WritebackStep"/> copied its writeback starts, so the
    /// disk writes while the job copies and that flush finds little left (QEMU leaves it all to the flush).
    /// </summary>
    private void HintWriteback()
    {
        long done = CurrentProgress;
        if (done - _hintedAt < WritebackStep || !_writeback.IsCompleted)
            return;
        _hintedAt = done;
        _writeback = _target.Storage.StartWritebackAsync().AsTask();
    }

    // ---- completion ------------------------------------------------------------------------------------

    /// <summary>backup_cleanup_sync_bitmap.</summary>
    private void CleanupSyncBitmap(bool success)
    {
        if (_syncBitmap is null || _successor is null)
            return;
        var set = _source.DirtyBitmaps;
        bool sync = (success || _bitmapMode == BitmapSyncMode.Always) && _bitmapMode != BitmapSyncMode.Never;
        DirtyBitmap bm;
        if (sync)
        {
            bm = Abdicate(set, _syncBitmap, _successor);
        }
        else
        {
            Reclaim(set, _syncBitmap, _successor);
            bm = _syncBitmap;
        }
        if (!success && _bitmapMode == BitmapSyncMode.Always)
        {
            // What was not copied stays to be copied next time.
            foreach (var (offset, length, dirty) in _copy.CopyBitmap.Extents())
                if (dirty)
                    bm.SetRange(offset, length);
        }
    }

    protected override void Commit() => CleanupSyncBitmap(success: true);

    protected override void Abort() => CleanupSyncBitmap(success: false);

    /// <summary>backup_clean: the filter leaves the graph (its users go back to the source), and the target is let go.</summary>
    protected override void Clean()
    {
        if (_cleaned)
            return;
        _cleaned = true;
        Defer(async () =>
        {
            _cbw.JobBlocker = null;
            _target.JobBlocker = null;
            await using (await DrainUsersAsync().ConfigureAwait(false))
                _graph.RemoveCopyBeforeWrite(_cbw);
            if (_ownsTarget)
            {
                await _target.FlushAsync().ConfigureAwait(false);
                await _graph.ReleaseIfUnusedAsync(_target).ConfigureAwait(false);
            }
        });
    }

    private async ValueTask<IAsyncDisposable> DrainUsersAsync()
    {
        var drains = new List<IAsyncDisposable>();
        foreach (var e in _cbw.Parents.ToArray())
            if (e.Parent is BlockBackend b)
                drains.Add(await b.DrainAsync().ConfigureAwait(false));
        return new Undrain(drains);
    }

    private sealed class Undrain(List<IAsyncDisposable> drains) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            foreach (var d in drains)
                await d.DisposeAsync().ConfigureAwait(false);
        }
    }
}
