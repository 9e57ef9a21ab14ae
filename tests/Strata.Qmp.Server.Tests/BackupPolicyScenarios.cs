namespace Strata.Qmp.Server.Tests;

/// <summary>
/// More backup scenarios for the same runner: error policies with blkdebug errors on the source (reads) and the target
/// (writes), speed changes, cancel and finalize flows, grouped transactions whose member fails, bitmap modes of a failing
/// job, each sync mode over a chain, and the copy-before-write node as the queries show it. Errors that must hit one copy
/// task only use blkdebug's sector filter, so which clusters were copied before the failure does not depend on timing.
/// </summary>
public sealed partial class BackupDifferentialTests
{
    /// <summary>A qcow2 node over a blkdebug filter with the given inject-error rules (a JSON array).</summary>
    private static Step AddBd(string node, string file, string rules, string extra = "") =>
        E("{\"execute\":\"blockdev-add\",\"arguments\":{\"driver\":\"qcow2\",\"node-name\":\"" + node + "\",\"file\":{\"driver\":\"blkdebug\",\"inject-error\":" + rules +
          ",\"image\":{\"driver\":\"file\",\"filename\":\"$D/" + file + "\"}}" + extra + "}}");

    /// <summary>A raw node over blkdebug: a sector filter then means the guest offset (6 MiB is sector 12288).</summary>
    private static Step AddRawBd(string node, string file, string rules) =>
        E("{\"execute\":\"blockdev-add\",\"arguments\":{\"driver\":\"raw\",\"node-name\":\"" + node + "\",\"file\":{\"driver\":\"blkdebug\",\"inject-error\":" + rules +
          ",\"image\":{\"driver\":\"file\",\"filename\":\"$D/" + file + "\"}}}}");

    private static string ReadError(string more = "") => "[{\"event\":\"read_aio\",\"iotype\":\"read\"" + more + "}]";

    private static string WriteError(string more = "") => "[{\"event\":\"write_aio\",\"iotype\":\"write\"" + more + "}]";

    private static Step BackupTo(string id, string target, string more = "") =>
        Backup("\"job-id\":\"" + id + "\",\"device\":\"src\",\"target\":\"" + target + "\",\"sync\":\"full\"" + more);

    private static Step Event(string name) => Wait("\"event\": \"" + name + "\"");

    private static Step Sha(string node, string bitmap) => Cmd("x-debug-block-dirty-bitmap-sha256", "\"node\":\"" + node + "\",\"name\":\"" + bitmap + "\"");

    /// <summary>A grouped transaction of a backup of src with <paramref name="sync"/> and a slow full backup of top.</summary>
    private static Step[] Grouped(string id, string target, string sync) =>
    [
        E("{\"execute\":\"transaction\",\"arguments\":{\"actions\":[{\"type\":\"blockdev-backup\",\"data\":{\"job-id\":\"" + id + "\",\"device\":\"src\",\"target\":\"" + target + "\"," + sync +
          "}},{\"type\":\"blockdev-backup\",\"data\":{\"job-id\":\"" + id + "x\",\"device\":\"top\",\"target\":\"tx\",\"sync\":\"full\",\"speed\":1}}],\"properties\":{\"completion-mode\":\"grouped\"}}}"),
        Null(id),
    ];

    private static Step QueryNodes => Cmd("query-named-block-nodes", "\"flat\":true");

    private static Dictionary<string, Scenario> PolicyScript() => new()
    {
        ["source error, report"] = new([
            E(Caps), AddBd("src", "src.qcow2", ReadError(",\"once\":true")), Add("t1", "t1.qcow2"),
            BackupTo("j", "t1", ",\"on-source-error\":\"report\""),
            Null("j"),
            QueryJobs,
        ], [], AnyOffset: true),

        ["source error once, ignore retries"] = new([
            E(Caps), AddBd("src", "src.qcow2", ReadError(",\"once\":true")), Add("t1", "t1.qcow2"),
            BackupTo("j", "t1", ",\"on-source-error\":\"ignore\",\"on-target-error\":\"report\""),
            Null("j"),
            Del("t1"),
        ], ["t1.qcow2"], AnyOffset: true),

        ["source error once, stop, resume"] = new([
            E(Caps), AddBd("src", "src.qcow2", ReadError(",\"once\":true,\"errno\":5")), Add("t1", "t1.qcow2"),
            BackupTo("j", "t1", ",\"on-source-error\":\"stop\""),
            Status("j", "paused"),
            QueryJobs,
            Cmd("block-job-set-speed", "\"device\":\"j\",\"speed\":65536"),
            Cmd("block-job-set-speed", "\"device\":\"j\",\"speed\":0"),
            Cmd("block-job-resume", "\"device\":\"j\""),
            Null("j"),
            Del("t1"),
        ], ["t1.qcow2"], AnyOffset: true),

        ["source error, stop, then cancel while paused"] = new([
            E(Caps), AddBd("src", "src.qcow2", ReadError()), Add("t1", "t1.qcow2"),
            BackupTo("j", "t1", ",\"on-source-error\":\"stop\",\"auto-dismiss\":false"),
            Status("j", "paused"),
            QueryJobs,
            Cmd("block-job-cancel", "\"device\":\"j\""),
            Cmd("block-job-cancel", "\"device\":\"j\",\"force\":true"),
            Status("j", "concluded"),
            QueryJobs,
            Cmd("block-job-cancel", "\"device\":\"j\""),
            Cmd("job-dismiss", "\"id\":\"j\""),
        ], [], AnyOffset: true),

        ["source EIO with enospc reports"] = new([
            E(Caps), AddBd("src", "src.qcow2", ReadError(",\"errno\":5")), Add("t1", "t1.qcow2"),
            BackupTo("j", "t1", ",\"on-source-error\":\"enospc\""),
            Null("j"),
        ], [], AnyOffset: true),

        ["source ENOSPC with enospc stops"] = new([
            E(Caps), AddBd("src", "src.qcow2", ReadError(",\"errno\":28,\"once\":true")), Add("t1", "t1.qcow2"),
            BackupTo("j", "t1", ",\"on-source-error\":\"enospc\",\"on-target-error\":\"ignore\""),
            Status("j", "paused"),
            QueryJobs,
            Cmd("job-resume", "\"id\":\"j\""),
            Null("j"),
            Del("t1"),
        ], ["t1.qcow2"], AnyOffset: true),

        ["target error, report"] = new([
            .. Source, AddBd("t1", "t1.qcow2", WriteError()),
            BackupTo("j", "t1", ",\"on-target-error\":\"report\",\"on-source-error\":\"stop\""),
            Null("j"),
            QueryJobs,
        ], [], AnyOffset: true),

        ["target error once, ignore retries"] = new([
            .. Source, AddBd("t1", "t1.qcow2", WriteError(",\"once\":true")),
            BackupTo("j", "t1", ",\"on-target-error\":\"ignore\""),
            Null("j"),
            Del("t1"),
        ], ["t1.qcow2"], AnyOffset: true),

        ["target error once, stop, pause and speed while stopped, resume"] = new([
            .. Source, AddBd("t1", "t1.qcow2", WriteError(",\"once\":true")),
            BackupTo("j", "t1", ",\"on-target-error\":\"stop\""),
            Status("j", "paused"),
            QueryJobs,
            Cmd("block-job-pause", "\"device\":\"j\""),
            Cmd("block-job-set-speed", "\"device\":\"j\",\"speed\":1048576"),
            QueryJobs,
            // What is left (the failed chunk) is copied at once: the job ends in the background (a query here would race it).
            Cmd("block-job-resume", "\"device\":\"j\""),
            Null("j"),
            Del("t1"),
        ], ["t1.qcow2"], AnyOffset: true),

        ["target ENOSPC with enospc stops, cancel while stopped"] = new([
            .. Source, AddBd("t1", "t1.qcow2", WriteError(",\"errno\":28")),
            BackupTo("j", "t1", ",\"on-target-error\":\"enospc\""),
            Status("j", "paused"),
            QueryJobs,
            Cmd("block-job-cancel", "\"device\":\"j\",\"force\":true"),
            Null("j"),
        ], [], AnyOffset: true),

        ["target EIO with enospc reports"] = new([
            .. Source, AddBd("t1", "t1.qcow2", WriteError(",\"once\":true")),
            BackupTo("j", "t1", ",\"on-target-error\":\"enospc\""),
            Null("j"),
        ], [], AnyOffset: true),

        ["speed changes: slow, faster, unlimited"] = new([
            .. Source, Add("t1", "t1.qcow2"), Add("top", "top.qcow2"), Add("t3", "t3.qcow2"),
            BackupTo("j", "t1", ",\"speed\":1"),
            .. Settle("s"),
            QueryJobs,
            Cmd("block-job-set-speed", "\"device\":\"j\",\"speed\":2"),
            QueryJobs,
            Cmd("block-job-set-speed", "\"device\":\"j\",\"speed\":0"),
            Null("j"),
            Del("t1"),
        ], ["t1.qcow2"], AnyOffset: true),

        ["cancel right after start, and a paused sync=none job"] = new([
            .. Source, Add("t1", "t1.qcow2"), Add("top", "top.qcow2"), Add("t3", "t3.qcow2"), Add("tn", "tn.qcow2", ",\"backing\":\"src\""),
            BackupTo("j", "t1", ",\"speed\":1"),
            .. Settle("s"),
            Cmd("block-job-cancel", "\"device\":\"j\""),
            QueryJobs,
            Backup("\"job-id\":\"n\",\"device\":\"src\",\"target\":\"tn\",\"sync\":\"none\",\"auto-dismiss\":false"),
            Cmd("block-job-pause", "\"device\":\"n\""),
            Cmd("block-job-set-speed", "\"device\":\"n\",\"speed\":4096"),
            QueryJobs,
            Cmd("block-job-cancel", "\"device\":\"n\""),
            Cmd("block-job-cancel", "\"device\":\"n\",\"force\":true"),
            Cmd("block-job-dismiss", "\"id\":\"n\""),
            Del("tn"),
        ], ["tn.qcow2"], AnyOffset: true),

        ["cancel a pending job, and a concluded one"] = new([
            .. Source, Add("t1", "t1.qcow2"), Add("t2", "t2.qcow2"),
            BackupTo("p", "t1", ",\"auto-finalize\":false,\"auto-dismiss\":false"),
            Status("p", "pending"),
            Cmd("query-jobs"),
            Cmd("block-job-cancel", "\"device\":\"p\""),
            QueryJobs,
            Cmd("job-dismiss", "\"id\":\"p\""),
            BackupTo("c", "t2", ",\"auto-dismiss\":false"),
            Status("c", "concluded"),
            Cmd("block-job-cancel", "\"device\":\"c\""),
            Cmd("block-job-cancel", "\"device\":\"c\",\"force\":true"),
            Cmd("job-cancel", "\"id\":\"c\""),
            Cmd("query-jobs"),
            Cmd("block-job-dismiss", "\"id\":\"c\""),
            Del("t2"),
        ], ["t2.qcow2"], AnyOffset: true),

        ["job-finalize and job-dismiss flows"] = new([
            .. Source, Add("t1", "t1.qcow2"), Add("t2", "t2.qcow2"),
            // b's bitmap is empty: it finishes at once, a later (two full copies would race to "waiting").
            Cmd("block-dirty-bitmap-add", "\"node\":\"src\",\"name\":\"e\""),
            E("""{"execute":"transaction","arguments":{"actions":[{"type":"blockdev-backup","data":{"job-id":"a","device":"src","target":"t1","sync":"full","auto-finalize":false,"auto-dismiss":false}},{"type":"blockdev-backup","data":{"job-id":"b","device":"src","target":"t2","sync":"incremental","bitmap":"e","auto-finalize":false}}],"properties":{"completion-mode":"grouped"}}}"""),
            Status("b", "pending"),
            Cmd("query-jobs"),
            Cmd("job-dismiss", "\"id\":\"a\""),
            Cmd("job-complete", "\"id\":\"a\""),
            Cmd("job-finalize", "\"id\":\"b\""),
            Cmd("query-jobs"),
            Cmd("job-dismiss", "\"id\":\"a\""),
            Cmd("job-finalize", "\"id\":\"a\""),
            Cmd("query-jobs"),
            Del("t1"), Del("t2"),
        ], ["t1.qcow2", "t2.qcow2"]),

        ["grouped transaction, a member fails on its target: all abort"] = new([
            .. Source, Add("t1", "t1.qcow2"), AddBd("t2", "t2.qcow2", WriteError()), Add("top", "top.qcow2"), Add("t3", "t3.qcow2"),
            E("""{"execute":"transaction","arguments":{"actions":[{"type":"blockdev-backup","data":{"job-id":"ok","device":"src","target":"t1","sync":"full","speed":1}},{"type":"blockdev-backup","data":{"job-id":"bad","device":"top","target":"t2","sync":"full"}}],"properties":{"completion-mode":"grouped"}}}"""),
            Null("bad"),
            Null("ok"),
            QueryJobs,
        ], [], AnyOffset: true),

        ["grouped transactions, a bitmap job fails: each bitmap mode"] = new([
            .. Source, Add("top", "top.qcow2"), Add("tx", "tn.qcow2", ",\"backing\":null"),
            Cmd("block-dirty-bitmap-add", "\"node\":\"src\",\"name\":\"b1\""),
            Cmd("block-dirty-bitmap-add", "\"node\":\"src\",\"name\":\"b2\""),
            Cmd("block-dirty-bitmap-merge", "\"node\":\"src\",\"target\":\"b1\",\"bitmaps\":[\"b0\"]"),
            Cmd("block-dirty-bitmap-merge", "\"node\":\"src\",\"target\":\"b2\",\"bitmaps\":[\"b0\"]"),
            // The bitmap job fails on its extent at 6 MiB (sector 12288), after the one at 512 KiB landed; its partner, a
            // slow backup of another disk, is cancelled with it (and is waited for before the group is finalized).
            AddRawBd("t1", "t1.raw", WriteError(",\"sector\":12288")), AddRawBd("t2", "t2.raw", WriteError(",\"sector\":12288")), AddRawBd("t3", "t3.raw", WriteError(",\"sector\":12288")),
            .. Grouped("a", "t1", "\"sync\":\"bitmap\",\"bitmap\":\"b0\",\"bitmap-mode\":\"on-success\""),
            .. Grouped("b", "t2", "\"sync\":\"bitmap\",\"bitmap\":\"b1\",\"bitmap-mode\":\"always\""),
            .. Grouped("c", "t3", "\"sync\":\"incremental\",\"bitmap\":\"b2\""),
            QueryJobs,
            Sha("src", "b0"), Sha("src", "b1"), Sha("src", "b2"),
            QueryNodes,
        ], [], AnyOffset: true),

        ["bitmap modes of a job failing on its second extent"] = new([
            .. Source,
            Cmd("block-dirty-bitmap-add", "\"node\":\"src\",\"name\":\"b1\""),
            Cmd("block-dirty-bitmap-add", "\"node\":\"src\",\"name\":\"b2\""),
            Cmd("block-dirty-bitmap-merge", "\"node\":\"src\",\"target\":\"b1\",\"bitmaps\":[\"b0\"]"),
            Cmd("block-dirty-bitmap-merge", "\"node\":\"src\",\"target\":\"b2\",\"bitmaps\":[\"b0\"]"),
            // Only the write at 6 MiB (sector 12288) fails: the extent at 512 KiB is copied first in every run.
            AddRawBd("t1", "t1.raw", WriteError(",\"sector\":12288")), AddRawBd("t2", "t2.raw", WriteError(",\"sector\":12288")), AddRawBd("t3", "t3.raw", WriteError(",\"sector\":12288")),
            Backup("\"job-id\":\"a\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"bitmap\",\"bitmap\":\"b0\",\"bitmap-mode\":\"always\""),
            Null("a"),
            Backup("\"job-id\":\"b\",\"device\":\"src\",\"target\":\"t2\",\"sync\":\"bitmap\",\"bitmap\":\"b1\",\"bitmap-mode\":\"on-success\""),
            Null("b"),
            Backup("\"job-id\":\"c\",\"device\":\"src\",\"target\":\"t3\",\"sync\":\"bitmap\",\"bitmap\":\"b2\",\"bitmap-mode\":\"never\""),
            Null("c"),
            Sha("src", "b0"), Sha("src", "b1"), Sha("src", "b2"),
            QueryNodes,
        ], [], AnyOffset: true),

        ["full backup with bitmap always, failing on its target"] = new([
            .. Source, AddRawBd("t1", "t1.raw", WriteError(",\"sector\":12288")),
            Backup("\"job-id\":\"a\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"full\",\"bitmap\":\"b0\",\"bitmap-mode\":\"always\""),
            Null("a"),
            Sha("src", "b0"),
            QueryNodes,
        ], ["t1.raw"], AnyOffset: true),

        ["each sync mode over a chain"] = new([
            E(Caps), Add("src", "top.qcow2"), Add("t1", "t1.qcow2"), Add("t2", "t2.qcow2"), Add("tb", "tb.qcow2", ",\"backing\":null"),
            Add("tn", "tn.qcow2", ",\"backing\":null"), Add("t3", "t3.qcow2"),
            Cmd("block-dirty-bitmap-add", "\"node\":\"src\",\"name\":\"c0\""),
            Backup("\"job-id\":\"f\",\"device\":\"src\",\"target\":\"t1\",\"sync\":\"full\",\"bitmap\":\"c0\",\"bitmap-mode\":\"on-success\""),
            Null("f"),
            Backup("\"job-id\":\"t\",\"device\":\"src\",\"target\":\"tb\",\"sync\":\"top\""),
            Null("t"),
            Backup("\"job-id\":\"i\",\"device\":\"src\",\"target\":\"t2\",\"sync\":\"incremental\",\"bitmap\":\"c0\""),
            Backup("\"job-id\":\"b\",\"device\":\"src\",\"target\":\"t3\",\"sync\":\"bitmap\",\"bitmap\":\"c0\",\"bitmap-mode\":\"always\""),
            Backup("\"job-id\":\"n\",\"device\":\"src\",\"target\":\"tn\",\"sync\":\"none\""),
            QueryJobs,
            Cmd("block-job-cancel", "\"device\":\"n\""),
            Sha("src", "c0"),
            Del("t1"), Del("tb"),
        ], ["t1.qcow2", "tb.qcow2", "t2.qcow2", "t3.qcow2"], AnyOffset: true),

        ["queries while a backup runs, with and without a filter name"] = new([
            .. Source, Add("t1", "t1.qcow2"), Add("t2", "t2.qcow2"), Add("top", "top.qcow2"), Add("t3", "t3.qcow2"),
            BackupTo("j", "t1", ",\"speed\":1"),
            .. Settle("s"),
            QueryNodes,
            Cmd("query-block"),
            Cmd("block-job-cancel", "\"device\":\"j\""),
            BackupTo("k", "t2", ",\"speed\":1,\"filter-node-name\":\"cbw\""),
            .. Settle("s2"),
            QueryNodes,
            Cmd("query-named-block-nodes"),
            Cmd("query-block"),
            Cmd("block-job-cancel", "\"device\":\"k\""),
            QueryNodes,
        ], [], AnyOffset: true),
    };
}
