using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using Strata.Client;
using Xunit;
using Xunit.Abstractions;

namespace Strata.Qmp.Server.Tests;

/// <summary>
/// An incremental backup chain as a backup application builds one: a transaction of a full backup and a persistent
/// bitmap, then rounds of guest writes over NBD (a model of the disk kept alongside), the bitmap read over NBD with
/// <c>nbdinfo --map=qemu:dirty-bitmap:b</c>, and an incremental backup into a qcow2 whose backing file is the previous
/// backup. The chain must read as the disk did when each backup started, hold exactly the clusters the bitmap named,
/// and check clean. In between: daemon restarts (quit, SIGTERM) with the bitmap stored in the image, a failed backup
/// that keeps the bitmap (on-success), a failed one that clears what it copied (always, its partial target kept in
/// the chain), and one that leaves the bitmap alone (never). Run on strata-daemon and on qemu-storage-daemon: the
/// same seed, the same expectations from the same model.
/// </summary>
public sealed class IncrementalBackupChainTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData("strata")]
    [InlineData("qsd")]
    public async Task Full_and_incremental_backups_restore_the_disk_at_every_point(string daemon)
    {
        QemuTools.RequireTools("qemu-img", "qemu-io", "nbdinfo", "qemu-storage-daemon");
        using var dir = new TempDir("incr");
        var clock = Stopwatch.StartNew();
        var run = new BackupChainRun(daemon, dir.Path);
        try
        {
            await run.RunAsync();
        }
        finally
        {
            await run.DisposeAsync();
            output.WriteLine($"{daemon}: {run.Summary} in {clock.Elapsed.TotalSeconds:0.0} s");
        }
    }
}

/// <summary>One run of the chain scenario against one daemon, with the model of the disk and of its bitmap.</summary>
internal sealed class BackupChainRun(string kind, string dir) : IAsyncDisposable
{
    private const long Size = 64 << 20;
    private const int Cluster = 64 << 10;
    private const int Clusters = (int)(Size / Cluster);
    private const int Rounds = 12;
    private const long FullSpeed = 128 << 20;
    private static readonly TimeSpan JobTimeout = TimeSpan.FromSeconds(60);

    private readonly Random _rng = new(7202);
    private readonly byte[] _disk = new byte[Size];
    private readonly string _source = Path.Combine(dir, "src.qcow2");
    private readonly string _modelFile = Path.Combine(dir, "model.raw");
    private readonly string _nbdSocket = Path.Combine(dir, "nbd.sock");

    /// <summary>The clusters the bitmap must hold: written since the last backup that cleared it.</summary>
    private readonly bool[] _dirty = new bool[Clusters];

    /// <summary>Each backup file in the chain, oldest first, with its SHA-256 when it was verified.</summary>
    private readonly List<(string File, string Sha)> _chain = [];

    private byte _version = 0x20;
    private int _writes, _mapsRead, _incrementals, _failed, _restarts;
    private DiskDaemon? _daemon;

    public string Summary =>
        $"{_chain.Count} backups in the chain ({_incrementals} incremental), {_writes} NBD writes, {_mapsRead} dirty maps read, " +
        $"{_failed} failed backups, {_restarts} restarts";

    private DiskDaemon Daemon => _daemon ?? throw new InvalidOperationException("no daemon");
    private QmpClient Qmp => Daemon.Qmp;
    private string Top => _chain[^1].File;

    public async Task RunAsync()
    {
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", _source, Size.ToString(CultureInfo.InvariantCulture))
            .EnsureSuccess();
        // Data before the chain starts, written by QEMU itself into the image.
        var seed = RandomWrites(10, 1 << 20);
        Run("qemu-io", ["-f", "qcow2", .. seed.SelectMany(w => new[] { "-c", w.Command }), _source]);
        foreach (var w in seed)
            Apply(w, markDirty: false);
        _daemon = await DiskDaemon.StartAsync(kind, dir, _source);

        await FullBackupWithBitmapAsync();
        for (int round = 1; round <= Rounds; round++)
            await RoundAsync(round);

        await Daemon.QuitAsync();
        _daemon = null;
        await CheckStoredBitmapAsync();
        WriteModel(_disk);
        Run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", _source, _modelFile);
        Run("qemu-img", "check", _source);
        // No later job or open may have changed a file of the chain, and the chain flattened by convert is the
        // disk as the last backup saw it (verified against the model when it was made).
        foreach (var (file, sha) in _chain)
            Assert.True(Sha(file) == sha, $"{Path.GetFileName(file)} changed after it was verified");
    }

    // ---- the full backup ---------------------------------------------------------------------------

    /// <summary>One transaction: the full backup and the bitmap start at the same instant; writes go on meanwhile.</summary>
    private async Task FullBackupWithBitmapAsync()
    {
        string full = Path.Combine(dir, "full.qcow2");
        using var events = SubscribeJobEvents();
        await Qmp.TransactionAsync(
            TransactionAction.DriveBackup(new DriveBackupArgs
            {
                JobId = "full", Device = "src", Target = full, Format = "qcow2", Sync = MirrorSyncMode.Full, Speed = FullSpeed,
            }),
            TransactionAction.BlockDirtyBitmapAdd(new BlockDirtyBitmapAddArgs
            {
                Node = "src", Name = "b", Granularity = Cluster, Persistent = true,
            }));
        var atStart = (byte[])_disk.Clone();
        // Written while the copy runs: the copy-before-write filter must keep them out of the full backup, the
        // bitmap must have them.
        WriteOverNbd(RandomWrites(8, 256 << 10));
        await WaitJobAsync(events, "full", expectError: null);

        _chain.Add((full, ""));
        VerifyChainPoint(atStart, expectedTopClusters: null);
    }

    // ---- one round ---------------------------------------------------------------------------------

    private async Task RoundAsync(int round)
    {
        var writes = RandomWrites(_rng.Next(3, 8), 384 << 10);
        if (round == 9)
        {
            // The "always" round needs data in clusters far apart, so that a failed write leaves others copied.
            writes.Add(new Write(1 << 20, 4096, NextVersion()));
            writes.Add(new Write(24 << 20, 4096, NextVersion()));
            writes.Add(new Write(48 << 20, 4096, NextVersion()));
        }
        WriteOverNbd(writes);

        switch (round)
        {
            case 3:
                await RestartAsync(viaSignal: false);
                break;
            case 7:
                await RestartAsync(viaSignal: true);
                break;
        }

        await CheckDirtyMapAsync(checkBusy: round == 1);

        switch (round)
        {
            case 2:
                await RefusedArgumentsAsync(round);
                break;
            case 4:
                await NeverModeBackupAsync(round);
                WriteOverNbd(RandomWrites(2, 64 << 10));
                await CheckDirtyMapAsync(checkBusy: false);
                break;
            case 5:
                await FailedOnSuccessBackupAsync(round);
                WriteOverNbd(RandomWrites(3, 128 << 10));
                await CheckDirtyMapAsync(checkBusy: false);
                break;
            case 9:
                await FailedAlwaysBackupAsync(round);
                WriteOverNbd(RandomWrites(3, 128 << 10));
                await CheckDirtyMapAsync(checkBusy: false);
                break;
        }

        await IncrementalBackupAsync(round, speed: round % 4 == 2 ? 4 << 20 : null);
    }

    /// <summary>sync=incremental into a new qcow2 over the previous backup, with writes during the job.</summary>
    private async Task IncrementalBackupAsync(int round, long? speed)
    {
        string target = NewTarget($"inc{round:00}.qcow2");
        string job = $"inc{round}";
        using var events = SubscribeJobEvents();
        await Qmp.DriveBackupAsync(new DriveBackupArgs
        {
            JobId = job, Device = "src", Target = target, Format = "qcow2", Mode = NewImageMode.Existing,
            Sync = MirrorSyncMode.Incremental, Bitmap = "b", Speed = speed,
        });
        var atStart = (byte[])_disk.Clone();
        var copied = (bool[])_dirty.Clone();
        Array.Clear(_dirty);
        // These land in the bitmap's successor: the next round's backup takes them, this one must not.
        WriteOverNbd(RandomWrites(2, 256 << 10));
        await WaitJobAsync(events, job, expectError: null);

        _chain.Add((target, ""));
        _incrementals++;
        VerifyChainPoint(atStart, copied);
    }

    /// <summary>sync=bitmap with bitmap-mode=never: a good backup of the dirty clusters, and the bitmap keeps them all.</summary>
    private async Task NeverModeBackupAsync(int round)
    {
        string target = NewTarget($"never{round:00}.qcow2");
        using var events = SubscribeJobEvents();
        await Qmp.DriveBackupAsync(new DriveBackupArgs
        {
            JobId = "never", Device = "src", Target = target, Format = "qcow2", Mode = NewImageMode.Existing,
            Sync = MirrorSyncMode.Bitmap, Bitmap = "b", BitmapMode = BitmapSyncMode.Never,
        });
        var atStart = (byte[])_disk.Clone();
        await WaitJobAsync(events, "never", expectError: null);
        _chain.Add((target, ""));
        VerifyChainPoint(atStart, (bool[])_dirty.Clone());
        await CheckDirtyMapAsync(checkBusy: false);
    }

    /// <summary>
    /// sync=incremental (bitmap-mode on-success) into a target whose every write fails: the job reports EIO, the
    /// bitmap keeps every cluster (and the writes made meanwhile), and the failed target is not part of the chain.
    /// </summary>
    private async Task FailedOnSuccessBackupAsync(int round)
    {
        string file = NewTarget($"fail{round:00}.qcow2");
        await AddBlkdebugTargetAsync("fb", "fq", file, sector: null);
        using var events = SubscribeJobEvents();
        await Qmp.BlockdevBackupAsync(new BlockdevBackupArgs
        {
            JobId = "fail", Device = "src", Target = "fb", Sync = MirrorSyncMode.Incremental, Bitmap = "b",
        });
        WriteOverNbd(RandomWrites(2, 64 << 10));
        await WaitJobAsync(events, "fail", expectError: "Input/output error");
        _failed++;
        await Qmp.BlockdevDelAsync("fb");
        Run("qemu-img", "check", file);
        await CheckBitmapInfoAsync(expectBusy: false);
        await CheckDirtyMapAsync(checkBusy: false);
    }

    /// <summary>
    /// sync=bitmap with bitmap-mode=always into a target where the writes covering one cluster fail: the job reports
    /// EIO, the bitmap loses what was copied and keeps the rest; the partial target goes into the chain (that is
    /// what "always" is for) and the next incremental completes it.
    /// </summary>
    private async Task FailedAlwaysBackupAsync(int round)
    {
        const long failing = 24 << 20;
        Assert.True(_dirty[failing / Cluster], "the failing cluster was written");
        string file = NewTarget($"part{round:00}.qcow2");
        await AddBlkdebugTargetAsync("pb", "pq", file, sector: failing / 512 + 3);
        var before = (bool[])_dirty.Clone();
        var atStart = (byte[])_disk.Clone();
        using var events = SubscribeJobEvents();
        await Qmp.BlockdevBackupAsync(new BlockdevBackupArgs
        {
            JobId = "part", Device = "src", Target = "pb", Sync = MirrorSyncMode.Bitmap, Bitmap = "b", BitmapMode = BitmapSyncMode.Always,
        });
        await WaitJobAsync(events, "part", expectError: "Input/output error");
        _failed++;
        await Qmp.BlockdevDelAsync("pb");

        var after = await ReadDirtyMapAsync();
        Assert.True(after[failing / Cluster], "the cluster whose write failed is still dirty");
        for (int c = 0; c < Clusters; c++)
            Assert.False(after[c] && !before[c], $"cluster {c} became dirty without a write");
        int copied = before.Count(d => d) - after.Count(d => d);
        Assert.True(copied > 0, $"nothing was copied before the failure ({before.Count(d => d)} dirty clusters)");

        // The partial target holds exactly the clusters the bitmap let go, with the data of the job's start.
        Run("qemu-img", "check", file);
        var cleared = new bool[Clusters];
        for (int c = 0; c < Clusters; c++)
            cleared[c] = before[c] && !after[c];
        Assert.Equal(Describe(cleared), Describe(TopClusters(file)));
        string flat = Path.Combine(dir, "part.raw");
        Run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", file, flat);
        var image = File.ReadAllBytes(flat);
        File.Delete(flat);
        for (int c = 0; c < Clusters; c++)
        {
            if (cleared[c])
                Assert.True(image.AsSpan(c * Cluster, Cluster).SequenceEqual(atStart.AsSpan(c * Cluster, Cluster)),
                    $"cluster {c} of the partial backup is not the disk at the job's start");
        }
        _chain.Add((file, Sha(file)));
        Array.Copy(after, _dirty, Clusters);
    }

    /// <summary>Arguments QEMU refuses, with its words.</summary>
    private async Task RefusedArgumentsAsync(int round)
    {
        string target = NewTarget($"refused{round:00}.qcow2");
        async Task Refused(DriveBackupArgs args, string message)
        {
            var e = await Assert.ThrowsAsync<QmpException>(() => Qmp.DriveBackupAsync(args));
            Assert.Equal(message, e.Description);
        }
        var common = new DriveBackupArgs
        {
            JobId = "r", Device = "src", Target = target, Format = "qcow2", Mode = NewImageMode.Existing, Sync = MirrorSyncMode.Incremental,
        };
        await Refused(common with { Bitmap = "b", BitmapMode = BitmapSyncMode.Always },
            "Bitmap sync mode must be 'on-success' when using sync mode 'incremental'");
        await Refused(common with { Sync = MirrorSyncMode.Bitmap, Bitmap = "b" }, "Bitmap sync mode must be given when providing a bitmap");
        await Refused(common with { Sync = MirrorSyncMode.Full, Bitmap = "b", BitmapMode = BitmapSyncMode.Never },
            "Bitmap sync mode 'never' has no meaningful effect when combined with sync mode 'full'");
        await Refused(common, "must provide a valid bitmap name for 'incremental' sync mode");
        await Refused(common with { Bitmap = "nope" }, "Bitmap 'nope' could not be found");
        File.Delete(target);
        await CheckBitmapInfoAsync(expectBusy: false);
    }

    // ---- restarts ----------------------------------------------------------------------------------

    /// <summary>
    /// Stops the daemon (quit or SIGTERM): the bitmap is stored in the image, which qemu-img shows; started again on
    /// the same image, the daemon has the bitmap back with the clusters written before the stop.
    /// </summary>
    private async Task RestartAsync(bool viaSignal)
    {
        if (viaSignal)
            await Daemon.TerminateAsync();
        else
            await Daemon.QuitAsync();
        _daemon = null;
        await CheckStoredBitmapAsync();
        Run("qemu-img", "check", _source);

        _daemon = await DiskDaemon.StartAsync(kind, dir, _source);
        _restarts++;
        await CheckBitmapInfoAsync(expectBusy: false);
        // Loaded for writing, the bitmap is marked in use in the file (a crash leaves it inconsistent).
        var flags = StoredBitmap(Run("qemu-img", "info", "-U", "--output=json", _source).StdOut);
        Assert.Equal("in-use,auto", flags);
    }

    private Task CheckStoredBitmapAsync()
    {
        var flags = StoredBitmap(Run("qemu-img", "info", "--output=json", _source).StdOut);
        Assert.Equal("auto", flags);
        return Task.CompletedTask;
    }

    /// <summary>The flags of bitmap b in qemu-img info's JSON, which must list it alone with granularity 64k.</summary>
    private static string StoredBitmap(string infoJson)
    {
        using var doc = JsonDocument.Parse(infoJson);
        var data = doc.RootElement.GetProperty("format-specific").GetProperty("data");
        Assert.True(data.TryGetProperty("bitmaps", out var bitmaps), "qemu-img info shows no bitmaps: " + infoJson);
        var b = Assert.Single(bitmaps.EnumerateArray());
        Assert.Equal("b", b.GetProperty("name").GetString());
        Assert.Equal(Cluster, b.GetProperty("granularity").GetInt64());
        return string.Join(",", b.GetProperty("flags").EnumerateArray().Select(f => f.GetString()));
    }

    // ---- the bitmap as the daemon shows it -----------------------------------------------------------

    /// <summary>query-named-block-nodes: b on src, persistent, recording, counting the model's dirty clusters.</summary>
    private async Task CheckBitmapInfoAsync(bool expectBusy)
    {
        var nodes = await Qmp.QueryNamedBlockNodesAsync(flat: true);
        var src = Assert.Single(nodes, n => n.NodeName == "src");
        var b = Assert.Single(src.DirtyBitmaps ?? [], d => d.Name == "b");
        Assert.True(b.Persistent, "b is persistent");
        Assert.True(b.Recording, "b is recording");
        Assert.Equal(expectBusy, b.Busy);
        Assert.Equal(Cluster, b.Granularity);
        Assert.Equal((long)_dirty.Count(d => d) * Cluster, b.Count);
    }

    /// <summary>The bitmap read over NBD must name exactly the model's dirty clusters; the live disk must be the model.</summary>
    private async Task CheckDirtyMapAsync(bool checkBusy)
    {
        var map = await ReadDirtyMapAsync(checkBusy);
        Assert.Equal(Describe(_dirty), Describe(map));
        await CheckBitmapInfoAsync(expectBusy: false);
        WriteModel(_disk);
        Run("qemu-img", "compare", "-f", "raw", "-F", "raw", $"nbd+unix:///w?socket={_nbdSocket}", _modelFile);
    }

    /// <summary>
    /// Exports the node again with the bitmap (an exported bitmap is busy, so only for the read), reads
    /// qemu:dirty-bitmap:b with nbdinfo and removes the export.
    /// </summary>
    private async Task<bool[]> ReadDirtyMapAsync(bool checkBusy = false)
    {
        await Qmp.BlockExportAddAsync(BlockExportOptions.Nbd("m", "src", new BlockExportOptionsNbd { Name = "m", Bitmaps = ["b"] }, writable: true));
        if (checkBusy)
        {
            await CheckBitmapInfoAsync(expectBusy: true);
            string target = NewTarget("busy.qcow2");
            var e = await Assert.ThrowsAsync<QmpException>(() => Qmp.DriveBackupAsync(new DriveBackupArgs
            {
                JobId = "busy", Device = "src", Target = target, Format = "qcow2", Mode = NewImageMode.Existing,
                Sync = MirrorSyncMode.Incremental, Bitmap = "b",
            }));
            Assert.Equal("Bitmap 'b' is currently in use by another operation and cannot be used", e.Description);
            File.Delete(target);
        }
        var json = Run("nbdinfo", "--json", "--map=qemu:dirty-bitmap:b", $"nbd+unix:///m?socket={_nbdSocket}").StdOut;
        using (var events = Qmp.SubscribeEvents(e => e.Name == QmpEventNames.BlockExportDeleted))
        {
            await Qmp.BlockExportDelAsync("m", BlockExportRemoveMode.Hard);
            await events.WaitAsync(e => e.Data.GetProperty("id").GetString() == "m", TimeSpan.FromSeconds(10));
        }
        _mapsRead++;

        var dirty = new bool[Clusters];
        long next = 0;
        using var doc = JsonDocument.Parse(json);
        foreach (var extent in doc.RootElement.EnumerateArray())
        {
            long offset = extent.GetProperty("offset").GetInt64(), length = extent.GetProperty("length").GetInt64();
            long type = extent.GetProperty("type").GetInt64();
            Assert.True(offset == next && length > 0, $"extents do not tile the disk at {offset}: {json}");
            next = offset + length;
            Assert.True(type is 0 or 1, $"type {type} in {json}");
            Assert.Equal(type == 1 ? "dirty" : "clean", extent.GetProperty("description").GetString());
            if (type == 1)
            {
                Assert.True(offset % Cluster == 0 && (next % Cluster == 0 || next == Size), $"a dirty extent off the granularity: {json}");
                for (long c = offset / Cluster; c < (next + Cluster - 1) / Cluster; c++)
                    dirty[c] = true;
            }
        }
        Assert.Equal(Size, next);
        return dirty;
    }

    // ---- checks of a chain point -----------------------------------------------------------------------

    /// <summary>
    /// The chain up to its top reads as <paramref name="expected"/>, every file checks clean, and the top holds
    /// exactly <paramref name="expectedTopClusters"/> (an incremental copies the dirty clusters, nothing else).
    /// </summary>
    private void VerifyChainPoint(byte[] expected, bool[]? expectedTopClusters)
    {
        WriteModel(expected);
        Run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", Top, _modelFile);
        Run("qemu-img", "check", Top);
        if (expectedTopClusters is not null)
            Assert.Equal(Describe(expectedTopClusters), Describe(TopClusters(Top)));
        _chain[^1] = (Top, Sha(Top));
    }

    /// <summary>The clusters a qcow2 file allocates itself (depth 0 in qemu-img map), data or zero.</summary>
    private static bool[] TopClusters(string file)
    {
        var json = Run("qemu-img", "map", "--output=json", "-f", "qcow2", file).StdOut;
        var top = new bool[Clusters];
        using var doc = JsonDocument.Parse(json);
        foreach (var e in doc.RootElement.EnumerateArray())
        {
            if (e.GetProperty("depth").GetInt32() != 0 || !e.GetProperty("present").GetBoolean())
                continue;
            long start = e.GetProperty("start").GetInt64(), length = e.GetProperty("length").GetInt64();
            for (long c = start / Cluster; c < (start + length + Cluster - 1) / Cluster; c++)
                top[c] = true;
        }
        return top;
    }

    // ---- writes and the model ----------------------------------------------------------------------------

    private readonly record struct Write(long Offset, long Length, byte? Pattern)
    {
        public string Command => Pattern is { } p
            ? $"write -P {p} {Offset} {Length}"
            : $"write -z {Offset} {Length}";
    }

    private byte NextVersion()
    {
        _version = (byte)(_version == 255 ? 1 : _version + 1);
        return _version;
    }

    /// <summary>Writes of random offset and length (unaligned), each with its own byte, one in six a zero write.</summary>
    private List<Write> RandomWrites(int count, int maxLength)
    {
        var list = new List<Write>(count);
        for (int i = 0; i < count; i++)
        {
            long length = _rng.Next(4) == 0 ? _rng.Next(1, 4) * (long)Cluster : _rng.Next(1, maxLength);
            long offset = _rng.Next(8) == 0 ? Size - length : _rng.NextInt64(0, Size - length);
            list.Add(new Write(offset, length, _rng.Next(6) == 0 ? null : NextVersion()));
        }
        return list;
    }

    /// <summary>One qemu-io over the NBD export w; the model takes the writes and the bitmap model their clusters.</summary>
    private void WriteOverNbd(List<Write> writes)
    {
        var r = Run("qemu-io", ["-f", "raw", .. writes.SelectMany(w => new[] { "-c", w.Command }), $"nbd+unix:///w?socket={_nbdSocket}"]);
        Assert.DoesNotContain("error", r.StdOut + r.StdErr, StringComparison.OrdinalIgnoreCase);
        foreach (var w in writes)
            Apply(w, markDirty: true);
        _writes += writes.Count;
    }

    private void Apply(Write w, bool markDirty)
    {
        _disk.AsSpan((int)w.Offset, (int)w.Length).Fill(w.Pattern ?? 0);
        if (markDirty)
            for (long c = w.Offset / Cluster; c <= (w.Offset + w.Length - 1) / Cluster; c++)
                _dirty[c] = true;
    }

    /// <summary>The model as a sparse raw file (only clusters with data are written), for qemu-img compare.</summary>
    private void WriteModel(byte[] image)
    {
        using var f = new FileStream(_modelFile, FileMode.Create, FileAccess.Write);
        f.SetLength(Size);
        for (int c = 0; c < Clusters; c++)
        {
            var span = image.AsSpan(c * Cluster, Cluster);
            if (span.IndexOfAnyExcept((byte)0) < 0)
                continue;
            f.Position = (long)c * Cluster;
            f.Write(span);
        }
    }

    // ---- helpers -------------------------------------------------------------------------------------------

    /// <summary>A new qcow2 backed by the chain's top, as a backup application prepares the next target.</summary>
    private string NewTarget(string name)
    {
        string file = Path.Combine(dir, name);
        Run("qemu-img", "create", "-q", "-f", "qcow2", "-b", Top, "-F", "qcow2", file);
        return file;
    }

    private async Task AddBlkdebugTargetAsync(string node, string image, string file, long? sector)
    {
        string rule = "{\"event\":\"none\",\"iotype\":\"write\",\"errno\":5" + (sector is { } s ? $",\"sector\":{s}" : "") + "}";
        using var args = JsonDocument.Parse(
            "{\"driver\":\"blkdebug\",\"node-name\":\"" + node + "\",\"inject-error\":[" + rule + "]," +
            "\"image\":{\"driver\":\"qcow2\",\"node-name\":\"" + image + "\",\"file\":{\"driver\":\"file\",\"filename\":\"" + file + "\"}}}");
        await Qmp.ExecuteAsync("blockdev-add", args.RootElement);
    }

    private QmpEventSubscription SubscribeJobEvents() =>
        Qmp.SubscribeEvents(e => e.Name is QmpEventNames.BlockJobCompleted or QmpEventNames.BlockJobCancelled);

    /// <summary>Waits for the job's BLOCK_JOB_COMPLETED with the error expected (or none), then for the job to go.</summary>
    private async Task WaitJobAsync(QmpEventSubscription events, string job, string? expectError)
    {
        var e = await events.WaitAsync(x => x.Data.GetProperty("device").GetString() == job, JobTimeout);
        Assert.Equal(QmpEventNames.BlockJobCompleted, e.Name);
        string? error = e.Data.TryGetProperty("error", out var err) ? err.GetString() : null;
        Assert.True(error == expectError, $"job {job} ended with error '{error}', expected '{expectError}': {e}");
        // Dismissed (auto-dismiss) once query-jobs no longer lists it: its target is closed by then.
        var clock = Stopwatch.StartNew();
        while ((await Qmp.QueryJobsAsync()).Any(j => j.Id == job))
        {
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"job {job} still listed 10 s after it completed");
            await Task.Delay(5);
        }
    }

    /// <summary>Runs a tool; a failure fails the test with the tool's output.</summary>
    private static ProcessResult Run(string tool, params string[] args)
    {
        var r = QemuTools.Run(tool, args);
        Assert.True(r.Succeeded, r.ToString());
        return r;
    }

    private static string Sha(string file) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(file)));

    /// <summary>Cluster runs as "a-b c d-e" (for readable assertion failures).</summary>
    private static string Describe(bool[] clusters)
    {
        var parts = new List<string>();
        for (int c = 0; c < clusters.Length; c++)
        {
            if (!clusters[c])
                continue;
            int start = c;
            while (c + 1 < clusters.Length && clusters[c + 1])
                c++;
            parts.Add(start == c ? $"{start}" : $"{start}-{c}");
        }
        return string.Join(" ", parts);
    }

    public async ValueTask DisposeAsync()
    {
        if (_daemon is not null)
            await _daemon.DisposeAsync();
        _daemon = null;
    }
}
