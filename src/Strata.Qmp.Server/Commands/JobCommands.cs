using System.Text.Json;
using System.Text.Json.Nodes;
using Strata.Block.Jobs;
using Strata.Images.Qcow2;
using Strata.Images.Storage;

namespace Strata.Qmp.Server.Commands;

/// <summary>query-jobs and job-pause/resume/cancel/complete/finalize/dismiss (job-qmp.c).</summary>
internal static class JobCommands
{
    public static ValueTask<JsonElement> QueryJobsAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        var list = c.Daemon.Jobs.Query().Select(j => new JobInfo
        {
            Id = j.Id,
            Type = ParseType(j.Type),
            Status = (Strata.Qmp.JobStatus)(int)j.Status, // the same QAPI enum, in the same order
            CurrentProgress = j.CurrentProgress,
            TotalProgress = j.TotalProgress,
            Error = j.Error,
        }).ToList();
        return ValueTask.FromResult(Args.Value(list, QmpJsonContext.Default.ListJobInfo));
    }

    private static JobType ParseType(string type) => type switch
    {
        "commit" => JobType.Commit,
        "stream" => JobType.Stream,
        "mirror" => JobType.Mirror,
        "backup" => JobType.Backup,
        "create" => JobType.Create,
        "amend" => JobType.Amend,
        "snapshot-load" => JobType.SnapshotLoad,
        "snapshot-save" => JobType.SnapshotSave,
        "snapshot-delete" => JobType.SnapshotDelete,
        _ => throw new InvalidOperationException($"unknown job type {type}"),
    };

    private static ValueTask<JsonElement> Verb(QmpCommandContext c, JsonElement args, Action<Job> verb) =>
        RunVerbAsync(c, c.Daemon.Jobs.Get(args.ReqStr("id")), verb);

    /// <summary>
    /// A verb on <paramref name="job"/>, then what it left to finish before the reply: with <paramref name="settle"/>,
    /// a block job with no I/O in flight stops at once and completes, as in QEMU; a job the verb completed (cancel,
    /// finalize, dismiss) closes its nodes.
    /// </summary>
    internal static async ValueTask<JsonElement> RunVerbAsync<TJob>(QmpCommandContext c, TJob job, Action<TJob> verb, bool settle = false)
        where TJob : Job
    {
        bool atOnce = settle && job is BlockJob { StopsAtOnce: true };
        verb(job);
        if (atOnce)
            await c.Daemon.Jobs.SettleAsync(job).ConfigureAwait(false);
        await c.Daemon.Jobs.RunDeferredAsync().ConfigureAwait(false);
        return await Args.Empty.ConfigureAwait(false);
    }

    public static ValueTask<JsonElement> JobPauseAsync(QmpCommandContext c, JsonElement args, CancellationToken ct) =>
        Verb(c, args, j => j.UserPause());

    public static ValueTask<JsonElement> JobResumeAsync(QmpCommandContext c, JsonElement args, CancellationToken ct) =>
        Verb(c, args, j => j.UserResume());

    /// <summary>job-cancel always forces (a mirror stops without pivoting).</summary>
    public static ValueTask<JsonElement> JobCancelAsync(QmpCommandContext c, JsonElement args, CancellationToken ct) =>
        RunVerbAsync(c, c.Daemon.Jobs.Get(args.ReqStr("id")), j => j.UserCancel(force: true), settle: true);

    public static ValueTask<JsonElement> JobCompleteAsync(QmpCommandContext c, JsonElement args, CancellationToken ct) =>
        Verb(c, args, j => j.UserComplete());

    public static ValueTask<JsonElement> JobFinalizeAsync(QmpCommandContext c, JsonElement args, CancellationToken ct) =>
        Verb(c, args, j => j.UserFinalize());

    public static ValueTask<JsonElement> JobDismissAsync(QmpCommandContext c, JsonElement args, CancellationToken ct) =>
        Verb(c, args, j => j.UserDismiss());
}

/// <summary>blockdev-create: the options become a <see cref="CreateRequest"/>, run by a <see cref="CreateJob"/>.</summary>
internal static class CreateCommands
{
    public static ValueTask<JsonElement> BlockdevCreateAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        string jobId = args.ReqStr("job-id");
        var options = args.Member("options")!.Value;
        string driver = options.ReqStr("driver");
        CreateJob.CheckDriver(driver); // QEMU looks at the driver before the job id
        CreateRequest request = driver == "file" ? FileRequest(options) : Qcow2Request(options);
        CreateJob.Start(c.Daemon.Jobs, c.Daemon.Graph, jobId, request);
        return Args.Empty;
    }

    private static FileCreateRequest FileRequest(JsonElement o) => new(o.ReqStr("filename"), o.ULong("size")!.Value)
    {
        Preallocation = Prealloc(o.Str("preallocation")) ?? Preallocation.Off,
        Nocow = o.Bool("nocow") ?? false,
        ExtentSizeHint = o.ULong("extent-size-hint"),
    };

    private static Qcow2CreateRequest Qcow2Request(JsonElement o) => new(Ref(o.Member("file")!.Value), o.ULong("size")!.Value)
    {
        DataFile = o.Member("data-file") is { } d ? Ref(d) : null,
        DataFileRaw = o.Bool("data-file-raw"),
        ExtendedL2 = o.Bool("extended-l2"),
        Version = o.Str("version") switch { null => null, "v2" => 2, _ => 3 },
        BackingFile = o.Str("backing-file"),
        BackingFormat = o.Str("backing-fmt"),
        Encrypt = o.Member("encrypt") is { } e ? new EncryptionRequest(e.ReqStr("format"), e.Str("key-secret")) : null,
        ClusterSize = o.ULong("cluster-size"),
        Preallocation = Prealloc(o.Str("preallocation")),
        LazyRefcounts = o.Bool("lazy-refcounts"),
        RefcountBits = o.Long("refcount-bits"),
        CompressionType = o.Str("compression-type") switch { null => null, "zstd" => CompressionType.Zstd, _ => CompressionType.Zlib },
    };

    private static NodeReference Ref(JsonElement r) =>
        r.ValueKind == JsonValueKind.String ? new NodeReference(r.GetString()) : new NodeReference(null, JsonNode.Parse(r.GetRawText())!.AsObject()); // a copy: the job outlives the request

    private static Preallocation? Prealloc(string? mode) => mode switch
    {
        null => null,
        "off" => Preallocation.Off,
        "metadata" => Preallocation.Metadata,
        "falloc" => Preallocation.Falloc,
        _ => Preallocation.Full,
    };
}
