namespace Strata.Block.Jobs;

/// <summary>
/// A background job with QEMU 7.2's state machine (job.c). A subclass supplies <see cref="RunAsync"/> (the work,
/// which calls <see cref="PausePointAsync"/> or <see cref="SleepAsync"/> between chunks) and optionally the
/// completion steps (<see cref="Prepare"/>, <see cref="Commit"/>, <see cref="Abort"/>, <see cref="Clean"/>).
/// Verbs (pause, resume, cancel, complete, finalize, dismiss) are checked against <see cref="JobTransitions"/> and
/// fail with QEMU's messages. All state lives under the registry's lock; completion runs on the
/// <see cref="MainLoop"/>, after the run has ended.
/// </summary>
public abstract class Job
{
    private JobRegistry? _registry;
    private bool _started;
    private bool _busy;
    private bool _paused = true;
    private int _pauseCount = 1;
    private bool _userPaused;
    private bool _cancelled;
    private bool _forceCancel;
    private bool _deferredToMainLoop;
    private bool _sleeping;
    private bool _atPause;
    private JobStatus _prior;
    private bool _exited;
    private bool _failed;
    private TaskCompletionSource? _wake;
    private readonly CancellationTokenSource _forceCancelled = new();

    /// <param name="id">The job id, or null for an internal job (no events, not listed).</param>
    protected Job(string? id, bool autoFinalize = true, bool autoDismiss = true)
    {
        Id = id;
        AutoFinalize = autoFinalize;
        AutoDismiss = autoDismiss;
    }

    /// <summary>The job id; null for internal jobs.</summary>
    public string? Id { get; }

    /// <summary>The QAPI JobType name ("create", "backup", ...).</summary>
    public abstract string Type { get; }

    public JobStatus Status { get; private set; }

    public bool AutoFinalize { get; }

    public bool AutoDismiss { get; }

    public bool IsInternal => Id is null;

    public long CurrentProgress { get; private set; }

    public long TotalProgress { get; private set; }

    /// <summary>Why the job failed ("Operation canceled" when cancelled), or null.</summary>
    public string? Error { get; private set; }

    /// <summary>The run is between chunks or ended (QEMU's busy flag inverted).</summary>
    public bool IsBusy { get { lock (Lock) return _busy; } }

    /// <summary>A pause was requested (by a user or internally) and not yet resumed.</summary>
    public bool IsPauseRequested { get { lock (Lock) return _pauseCount > 0; } }

    /// <summary>The run is stopped at a pause point (or not started yet).</summary>
    public bool IsPaused { get { lock (Lock) return _paused; } }

    public bool IsUserPaused { get { lock (Lock) return _userPaused; } }

    /// <summary>A cancel was requested (job_cancel_requested).</summary>
    public bool IsCancelRequested { get { lock (Lock) return _cancelled; } }

    /// <summary>The job was cancelled for good (job_is_cancelled: a forced cancel).</summary>
    public bool IsCancelled { get { lock (Lock) return _forceCancel; } }

    public JobTransaction? Transaction { get; internal set; }

    /// <summary>Ends when the run (not the completion) has ended.</summary>
    public Task Run { get; private set; } = Task.CompletedTask;

    private object Lock => _registry?.Lock ?? this;

    private JobRegistry Registry => _registry ?? throw new InvalidOperationException("the job is not registered");

    /// <summary>Cancelled when the job is force-cancelled: long waits inside the run may use it.</summary>
    protected CancellationToken CancellationToken => _forceCancelled.Token;

    /// <summary>The work. An exception fails the job with its message.</summary>
    protected abstract Task RunAsync();

    /// <summary>Before commit/abort, for every job of the transaction; an exception fails the transaction.</summary>
    protected virtual void Prepare()
    {
    }

    /// <summary>The job and its transaction succeeded.</summary>
    protected virtual void Commit()
    {
    }

    /// <summary>The job or its transaction failed or was cancelled.</summary>
    protected virtual void Abort()
    {
    }

    /// <summary>After commit or abort.</summary>
    protected virtual void Clean()
    {
    }

    /// <summary>Whether job-complete means anything for this job (mirror's switch-over).</summary>
    protected virtual bool SupportsComplete => false;

    /// <summary>job-complete's action once the verb is accepted.</summary>
    protected virtual void OnComplete()
    {
    }

    /// <summary>I/O the job started that may still run while it stands paused (a drain waits for it).</summary>
    protected virtual Task InFlightIo() => Task.CompletedTask;

    /// <summary>The run is about to stop at a pause point (lock held).</summary>
    protected virtual void OnPausing()
    {
    }

    /// <summary>job-resume was accepted (block jobs reset their I/O status).</summary>
    protected virtual void OnUserResume()
    {
    }

    /// <summary>The lock that guards the job's state (the registry's).</summary>
    protected object JobLock => Lock;

    /// <summary>Sends an event to the registry's listeners (call with <see cref="JobLock"/> held).</summary>
    protected void Publish(JobEvent e) => Registry.Events.Publish(e);

    /// <summary>
    /// Work a completion step needs that must wait (closing a node): it runs on the main loop, in the turn that
    /// completed the job, before the turn ends (see <see cref="JobRegistry.RunDeferredAsync"/>).
    /// </summary>
    protected void Defer(Func<ValueTask> work) => Registry.Defer(work);

    /// <summary>
    /// An error with policy "stop" (block_job_error_action): the job pauses as if the user had paused it, so that
    /// job-resume continues it.
    /// </summary>
    protected void PauseAsUser()
    {
        lock (Lock)
        {
            if (!_userPaused)
            {
                _pauseCount++;
                _userPaused = true;
            }
        }
    }

    /// <summary>
    /// A cancel was asked; returns whether it is a forced cancel. Jobs without a soft cancel (all but mirror) always
    /// force it.
    /// </summary>
    protected virtual bool OnCancel(bool force) => true;

    // ---- for the run ------------------------------------------------------------------------------------

    /// <summary>
    /// block_job_ratelimit_sleep: waits as long as <paramref name="limiter"/> says (at least one yield), until the
    /// wait is over or the job is cancelled.
    /// </summary>
    protected async ValueTask RateLimitSleepAsync(RateLimiter limiter)
    {
        long delay;
        do
        {
            delay = limiter.CalculateDelayNs(0);
            await SleepAsync(TimeSpan.FromTicks(Math.Max(0, delay) / 100)).ConfigureAwait(false);
        }
        while (delay > 0 && !IsCancelled);
    }

    /// <summary>Adds work done to the progress.</summary>
    protected void ProgressUpdate(long done)
    {
        lock (Lock)
            CurrentProgress += done;
    }

    /// <summary>Sets the remaining work (total = current + remaining).</summary>
    protected void ProgressSetRemaining(long remaining)
    {
        lock (Lock)
            TotalProgress = CurrentProgress + remaining;
    }

    protected void ProgressIncreaseRemaining(long delta)
    {
        lock (Lock)
            TotalProgress += delta;
    }

    /// <summary>Moves a running job to ready (for jobs with a completion phase such as mirror).</summary>
    protected void TransitionToReady()
    {
        lock (Lock)
        {
            Transition(JobStatus.Ready);
            Registry.Events.Publish(new JobReady(this));
        }
    }

    /// <summary>
    /// Where the job stops while paused (job_pause_point): it shows "paused" (or "standby" when ready) until resumed
    /// or cancelled, then returns to the status it had. The one who wakes it (resume, cancel) restores the status at
    /// once, as QEMU's job_enter runs the job before the verb returns.
    /// </summary>
    protected async ValueTask PausePointAsync()
    {
        TaskCompletionSource wake;
        lock (Lock)
        {
            if (!_atPause)
            {
                if (_pauseCount == 0 || _forceCancel)
                    return;
                StopAtPausePoint();
            }
            wake = _wake!;
        }

        await wake.Task.ConfigureAwait(false);
    }

    /// <summary>The job stands at a pause point from now on (lock held).</summary>
    private void StopAtPausePoint()
    {
        OnPausing();
        _prior = Status;
        Transition(_prior == JobStatus.Ready ? JobStatus.Standby : JobStatus.Paused);
        _paused = true;
        _busy = false;
        _atPause = true;
        var old = _wake;
        _wake = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        old?.TrySetResult(); // a sleep in progress ends: its job goes on to this pause point
    }

    /// <summary>
    /// Sleeps for <paramref name="delay"/> (rate limiting) unless cancelled; a resume or cancel wakes it early. Then a
    /// pause point.
    /// </summary>
    protected ValueTask SleepAsync(TimeSpan delay) => YieldAsync(null, delay);

    /// <summary>
    /// job_yield while I/O the job started runs beside it (as QEMU's backup waits for its block-copy call): the job is
    /// idle, so a pause or cancel acts at once rather than after the I/O; it goes on when <paramref name="work"/> ends
    /// or a verb wakes it, then passes a pause point. The caller checks whether the work ended.
    /// </summary>
    protected ValueTask YieldUntilAsync(Task work) => YieldAsync(work, Timeout.InfiniteTimeSpan);

    private async ValueTask YieldAsync(Task? work, TimeSpan delay)
    {
        TaskCompletionSource? wake = null;
        lock (Lock)
        {
            if (_forceCancel)
                return;
            if (_pauseCount == 0)
            {
                _busy = false;
                _sleeping = true;
                wake = _wake = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            }
        }

        if (wake is not null)
        {
            await Task.WhenAny(wake.Task, work ?? Task.Delay(delay)).ConfigureAwait(false);
            lock (Lock)
            {
                _sleeping = false;
                if (!_atPause)
                {
                    _busy = true;
                    if (ReferenceEquals(_wake, wake))
                        _wake = null;
                }
            }
        }

        await PausePointAsync().ConfigureAwait(false);
    }

    /// <summary>block_copy_kick: a job sleeping for its speed wakes to look at the new one (a paused job stays paused).</summary>
    protected void WakeFromSleep()
    {
        lock (Lock)
        {
            if (_sleeping && !_atPause)
                Enter();
        }
    }

    /// <summary>Wakes the run if it waits (job_enter).</summary>
    private void Enter()
    {
        if (!_started || _deferredToMainLoop || _busy)
            return;
        _busy = true;
        if (_atPause)
        {
            _atPause = false;
            _paused = false;
            Transition(_prior);
        }
        var wake = _wake;
        _wake = null;
        wake?.TrySetResult();
    }

    // ---- registry and start ---------------------------------------------------------------------------

    internal void Attach(JobRegistry registry)
    {
        _registry = registry;
        Transition(JobStatus.Created);
    }

    /// <summary>job_start: the run begins at once, on the caller's thread, until its first wait.</summary>
    internal void Start()
    {
        lock (Lock)
        {
            if (_started)
                throw new InvalidOperationException($"job '{Id}' already started");
            _started = true;
            _pauseCount--;
            _busy = true;
            _paused = false;
            Transition(JobStatus.Running);
        }

        _startingThread = Environment.CurrentManagedThreadId;
        Run = RunEntryAsync();
        _startingThread = 0;
        bool endedInline;
        lock (Lock)
            endedInline = _endedInline;
        if (endedInline)
        {
            // The run ended before waiting on anything: it completes now, inside the caller's turn of the main loop
            // (QEMU's job_exit runs before the reply then).
            Exit();
        }
        else
        {
            // Also when the run, having waited, has ended on another thread by now: that is not decided by the clock.
            _ = ExitOnMainLoopAsync();
        }
    }

    // The thread inside Start (0 outside it), and whether the run ended on it, i.e. without ever waiting.
    private volatile int _startingThread;
    private bool _endedInline;

    private async Task RunEntryAsync()
    {
        await PausePointAsync().ConfigureAwait(false);
        try
        {
            await RunAsync().ConfigureAwait(false);
        }
        catch (Exception e)
        {
            lock (Lock)
            {
                _failed = true;
                Error = e is OperationCanceledException && _forceCancel ? null : e.Message;
            }
        }

        lock (Lock)
        {
            _deferredToMainLoop = true;
            _busy = true;
            _endedInline = _startingThread == Environment.CurrentManagedThreadId;
        }
    }

    private async Task ExitOnMainLoopAsync()
    {
        await Run.ConfigureAwait(false);
        using (await Registry.MainLoop.EnterAsync().ConfigureAwait(false))
        {
            Exit();
            await Registry.RunDeferredAsync().ConfigureAwait(false);
        }
    }

    /// <summary>job_exit: the run is over; complete the job (unless a transaction's abort already did).</summary>
    private void Exit()
    {
        lock (Lock)
        {
            if (_exited)
                return;
            _exited = true;
            _busy = false;
            if (Status != JobStatus.Null && !JobTransitions.IsCompleted(Status))
                Completed();
        }
    }

    // ---- verbs ----------------------------------------------------------------------------------------

    /// <summary>job_apply_verb: throws QEMU's message when the status refuses the verb.</summary>
    public void CheckVerb(JobVerb verb)
    {
        lock (Lock)
        {
            if (!JobTransitions.Accepts(Status, verb))
                throw new BlockException(
                    $"Job '{Id}' in state '{JobTransitions.Name(Status)}' cannot accept command verb '{JobTransitions.Name(verb)}'");
        }
    }

    /// <summary>job-pause: takes effect at the job's next pause point.</summary>
    public void UserPause()
    {
        lock (Lock)
        {
            CheckVerb(JobVerb.Pause);
            if (_userPaused)
                throw new BlockException("Job is already paused");
            _userPaused = true;
            _pauseCount++;
            // A sleeping job (between chunks, or waiting for a cancel) stops at its pause point now, as QEMU's
            // job_pause enters it.
            if (_sleeping && !_atPause)
                StopAtPausePoint();
        }
    }

    /// <summary>job-resume.</summary>
    public void UserResume()
    {
        lock (Lock)
        {
            if (!_userPaused || _pauseCount <= 0)
                throw new BlockException("Can't resume a job that was not paused");
            CheckVerb(JobVerb.Resume);
            _userPaused = false;
            OnUserResume();
            ResumeCore();
        }
    }

    /// <summary>An internal pause (e.g. while a node is drained); pairs with <see cref="Resume"/>.</summary>
    public void Pause()
    {
        lock (Lock)
        {
            _pauseCount++;
            if (_sleeping && !_atPause)
                StopAtPausePoint();
        }
    }

    /// <summary>
    /// bdrv_drained_begin as a job sees it: an internal pause, and the wait until the run stands at a pause point (or
    /// has ended) and its I/O has landed, so that the job's "paused" comes before whatever the drain is for.
    /// </summary>
    public async ValueTask DrainPauseAsync()
    {
        Pause();
        while (true)
        {
            lock (Lock)
            {
                if (!_started || _atPause || _deferredToMainLoop || Run.IsCompleted)
                    break;
            }
            await Task.Delay(1).ConfigureAwait(false);
        }
        await InFlightIo().ConfigureAwait(false);
    }

    /// <summary>Started, not yet finished and not waiting for the user: a drain pauses (and resumes) it visibly.</summary>
    public bool IsActive
    {
        get
        {
            lock (Lock)
                return _started && !_deferredToMainLoop && Status is JobStatus.Running or JobStatus.Ready or JobStatus.Paused or JobStatus.Standby;
        }
    }

    public void Resume()
    {
        lock (Lock)
            ResumeCore();
    }

    private void ResumeCore()
    {
        if (_pauseCount <= 0)
            throw new InvalidOperationException($"job '{Id}' is not paused");
        _pauseCount--;
        if (_pauseCount == 0 && (!_sleeping || _atPause))
            Enter(); // a sleeping job wakes at the end of its sleep, as with QEMU's pending timer
    }

    /// <summary>job-cancel (QMP always forces: a mirror stops without completing).</summary>
    public void UserCancel(bool force = true)
    {
        lock (Lock)
        {
            CheckVerb(JobVerb.Cancel);
            Cancel(force);
        }
    }

    /// <summary>job_cancel: a concluded job is dismissed; one never started completes at once.</summary>
    public void Cancel(bool force)
    {
        lock (Lock)
        {
            if (Status == JobStatus.Concluded)
            {
                Dismissed();
                return;
            }

            RequestCancel(force);
            if (!_started)
                Completed();
            else if (_deferredToMainLoop)
            {
                // The run has ended: a forced cancel aborts the job (and its group) now.
                if (_forceCancel && !_exited)
                {
                    _exited = true;
                    Completed();
                }
                else if (_forceCancel)
                    TxnAbort();
            }
            else
                Enter();
        }
    }

    private void RequestCancel(bool force)
    {
        force = OnCancel(force);
        if (_userPaused)
        {
            OnUserResume(); // job_cancel_async resumes a user-paused job as job-resume would (a block job's I/O status resets)
            _userPaused = false;
            _pauseCount--;
        }

        // A soft cancel of a job whose run has ended means nothing.
        if (force || !_deferredToMainLoop)
        {
            _cancelled = true;
            _forceCancel |= force;
            // Cancelled off this thread: callbacks of the token must not run the job's code inside a verb's lock.
            if (_forceCancel && !_forceCancelled.IsCancellationRequested)
                ThreadPool.UnsafeQueueUserWorkItem(static cts => cts.Cancel(), _forceCancelled, preferLocal: false);
        }
    }

    /// <summary>job-complete.</summary>
    public void UserComplete()
    {
        lock (Lock)
        {
            CheckVerb(JobVerb.Complete);
            if (_cancelled || !SupportsComplete)
                throw new BlockException($"The active block job '{Id}' cannot be completed");
            OnComplete();
        }
    }

    /// <summary>job-finalize.</summary>
    public void UserFinalize()
    {
        lock (Lock)
        {
            CheckVerb(JobVerb.Finalize);
            DoFinalize();
        }
    }

    /// <summary>job-dismiss.</summary>
    public void UserDismiss()
    {
        lock (Lock)
        {
            CheckVerb(JobVerb.Dismiss);
            Dismissed();
        }
    }

    // ---- completion (main loop, registry lock held) ----------------------------------------------------

    private void Transition(JobStatus to)
    {
        var from = Status;
        if (!JobTransitions.CanMove(from, to))
            throw new InvalidOperationException($"job '{Id}': no transition from {JobTransitions.Name(from)} to {JobTransitions.Name(to)}");
        Status = to;
        if (!IsInternal && from != to)
            Registry.Events.Publish(new JobStatusChanged(this, to));
    }

    private void UpdateResult()
    {
        if (!_failed && _forceCancel)
            _failed = true;
        if (_failed)
        {
            Error ??= "Operation canceled";
            Transition(JobStatus.Aborting);
        }
    }

    private void Completed()
    {
        UpdateResult();
        if (_failed)
            TxnAbort();
        else
            TxnSuccess();
    }

    private JobTransaction Txn => Transaction ?? throw new InvalidOperationException($"job '{Id}' has no transaction");

    private void TxnSuccess()
    {
        var txn = Txn;
        Transition(JobStatus.Waiting);
        foreach (var other in txn.Jobs)
            if (!JobTransitions.IsCompleted(other.Status))
                return;

        foreach (var j in txn.Jobs.ToArray())
        {
            j.Transition(JobStatus.Pending);
            if (!j.AutoFinalize)
                Registry.Events.Publish(new JobPendingFinalize(j));
        }

        if (txn.Jobs.All(j => j.AutoFinalize))
            DoFinalize();
    }

    private void DoFinalize()
    {
        var txn = Txn;
        foreach (var j in txn.Jobs.ToArray())
        {
            if (!j.PrepareStep())
            {
                TxnAbort();
                return;
            }
        }

        foreach (var j in txn.Jobs.ToArray())
            j.FinalizeSingle();
    }

    private bool PrepareStep()
    {
        if (_failed)
            return false;
        try
        {
            Prepare();
        }
        catch (Exception e) when (e is BlockException or IOException or Strata.Images.ImageException or InvalidOperationException)
        {
            _failed = true;
            Error = e.Message;
            UpdateResult();
            return false;
        }

        return true;
    }

    private void TxnAbort()
    {
        var txn = Txn;
        if (!txn.Aborting)
        {
            txn.Aborting = true;
            // One failure decides the group: the others stop as fast as they can.
            foreach (var other in txn.Jobs.ToArray())
            {
                if (!ReferenceEquals(other, this))
                {
                    other.RequestCancel(true);
                    if (!other._started)
                        other.UpdateResult();
                    else
                        other.Enter();
                }
            }
        }

        // job_completed_txn_abort: the members are finalized newest first; one whose run has not ended yet is waited
        // for (it finishes this when it exits), so the members before it are finalized already.
        while (txn.Jobs.Count > 0 && JobTransitions.IsCompleted(txn.Jobs[0].Status))
            txn.Jobs[0].FinalizeSingle();
    }

    private void FinalizeSingle()
    {
        UpdateResult();
        try
        {
            if (!_failed)
                Commit();
            else
                Abort();
        }
        finally
        {
            Clean();
        }

        if (_started)
            Registry.Events.Publish(new JobFinished(this, _forceCancel));
        Transaction?.Remove(this);
        Transition(JobStatus.Concluded);
        if (AutoDismiss || !_started)
            Dismissed();
    }

    /// <summary>job_early_fail: a job created but refused before it could start leaves at once ("null").</summary>
    internal void EarlyFail()
    {
        lock (Lock)
        {
            Transaction?.Remove(this);
            Transition(JobStatus.Null);
            Registry.Remove(this);
        }
    }

    /// <summary>
    /// For a verb that ended the run (a cancel): when the run is over, the job completes now, in the caller's turn of
    /// the main loop, as QEMU completes a cancelled job before the command returns.
    /// </summary>
    internal void ExitIfRunEnded()
    {
        if (Run.IsCompleted)
            Exit();
    }

    private void Dismissed()
    {
        _busy = false;
        _paused = false;
        _deferredToMainLoop = true;
        Transaction?.Remove(this);
        Transition(JobStatus.Null);
        Registry.Remove(this);
    }
}
