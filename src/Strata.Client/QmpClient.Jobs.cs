using Strata.Qmp;

namespace Strata.Client;

// query-jobs, job-*, query-block-jobs, block-job-*.
public sealed partial class QmpClient
{
    public async Task<IReadOnlyList<JobInfo>> QueryJobsAsync(CancellationToken cancellationToken = default) =>
        await ExecuteAsync("query-jobs", Ctx.ListJobInfo, cancellationToken).ConfigureAwait(false);

    public Task JobDismissAsync(string id, CancellationToken cancellationToken = default) => JobVerbAsync("job-dismiss", id, cancellationToken);

    public Task JobCancelAsync(string id, CancellationToken cancellationToken = default) => JobVerbAsync("job-cancel", id, cancellationToken);

    public Task JobPauseAsync(string id, CancellationToken cancellationToken = default) => JobVerbAsync("job-pause", id, cancellationToken);

    public Task JobResumeAsync(string id, CancellationToken cancellationToken = default) => JobVerbAsync("job-resume", id, cancellationToken);

    public Task JobCompleteAsync(string id, CancellationToken cancellationToken = default) => JobVerbAsync("job-complete", id, cancellationToken);

    public Task JobFinalizeAsync(string id, CancellationToken cancellationToken = default) => JobVerbAsync("job-finalize", id, cancellationToken);

    private Task JobVerbAsync(string command, string id, CancellationToken cancellationToken) =>
        RunAsync(command, new JobIdArgs { Id = id }, Ctx.JobIdArgs, cancellationToken);

    public async Task<IReadOnlyList<BlockJobInfo>> QueryBlockJobsAsync(CancellationToken cancellationToken = default) =>
        await ExecuteAsync("query-block-jobs", Ctx.ListBlockJobInfo, cancellationToken).ConfigureAwait(false);

    public Task BlockJobSetSpeedAsync(string device, long speed, CancellationToken cancellationToken = default) =>
        RunAsync("block-job-set-speed", new BlockJobSetSpeedArgs { Device = device, Speed = speed }, Ctx.BlockJobSetSpeedArgs, cancellationToken);

    public Task BlockJobCancelAsync(string device, bool? force = null, CancellationToken cancellationToken = default) =>
        RunAsync("block-job-cancel", new BlockJobCancelArgs { Device = device, Force = force }, Ctx.BlockJobCancelArgs, cancellationToken);

    public Task BlockJobPauseAsync(string device, CancellationToken cancellationToken = default) =>
        RunAsync("block-job-pause", new BlockJobDeviceArgs { Device = device }, Ctx.BlockJobDeviceArgs, cancellationToken);

    public Task BlockJobResumeAsync(string device, CancellationToken cancellationToken = default) =>
        RunAsync("block-job-resume", new BlockJobDeviceArgs { Device = device }, Ctx.BlockJobDeviceArgs, cancellationToken);

    public Task BlockJobCompleteAsync(string device, CancellationToken cancellationToken = default) =>
        RunAsync("block-job-complete", new BlockJobDeviceArgs { Device = device }, Ctx.BlockJobDeviceArgs, cancellationToken);
}
