using System.Text.Json;
using Strata.Qmp;
using Xunit;

namespace Strata.Client.Tests;

/// <summary>
/// The client against a real daemon. Subclasses choose the daemon (<see cref="Daemon"/>), so
/// the same tests run against qemu-storage-daemon and strata-daemon.
/// </summary>
public abstract class QmpClientTestsBase
{
    protected static readonly TimeSpan EventTimeout = TimeSpan.FromSeconds(30);

    /// <summary>The daemon under test.</summary>
    protected abstract DaemonCommand Daemon { get; }

    private async Task WithClientAsync(Func<QmpDaemon, QmpClient, Task> test, QmpClientOptions? options = null)
    {
        await using var daemon = await QmpDaemon.StartAsync(Daemon);
        await using var client = await daemon.ConnectAsync(options);
        await test(daemon, client);
    }

    [Fact]
    public Task Greeting_and_query_version() => WithClientAsync(async (_, qmp) =>
    {
        Assert.True(qmp.Version.Qemu.Major >= 7, qmp.Version.Qemu.ToString());
        Assert.Contains(QmpCapabilities.Oob, qmp.Capabilities);
        Assert.False(qmp.OobEnabled);
        var version = await qmp.QueryVersionAsync();
        Assert.Equal(qmp.Version, version);
        Assert.False(string.IsNullOrEmpty(version.Package));

        var commands = await qmp.QueryCommandsAsync();
        Assert.Contains(commands, c => c.Name == "blockdev-add");
        Assert.Contains(commands, c => c.Name == "transaction");
    });

    [Fact]
    public Task Oob_can_be_negotiated() => WithClientAsync((_, qmp) =>
    {
        Assert.True(qmp.OobEnabled);
        return qmp.QueryVersionAsync();
    }, new QmpClientOptions { EnableOob = true });

    [Fact]
    public Task Blockdev_add_file_and_qcow2_then_query_named_block_nodes() => WithClientAsync(async (d, qmp) =>
    {
        var image = d.PathOf("disk.qcow2");
        Tools.QemuImg("create", "-q", "-f", "qcow2", image, "64M");

        await qmp.BlockdevAddAsync(BlockdevOptions.File("f0", image));
        await qmp.BlockdevAddAsync(BlockdevOptions.Qcow2("d0", "f0"));

        var nodes = await qmp.QueryNamedBlockNodesAsync(flat: true);
        var d0 = Assert.Single(nodes, n => n.NodeName == "d0");
        Assert.Equal("qcow2", d0.Driver);
        Assert.Equal(image, d0.File);
        Assert.False(d0.ReadOnly);
        Assert.Equal(64L << 20, d0.Image.VirtualSize);
        Assert.Equal("qcow2", d0.Image.Format);
        Assert.Equal(65536, d0.Image.ClusterSize);
        var qcow2 = d0.Image.FormatSpecific!.AsQcow2()!;
        Assert.Equal("1.1", qcow2.Compat);
        Assert.Equal(16, qcow2.RefcountBits);
        Assert.Equal(Qcow2CompressionType.Zlib, qcow2.CompressionType);
        Assert.True(d0.Cache.Writeback);

        var f0 = Assert.Single(nodes, n => n.NodeName == "f0");
        Assert.Equal("file", f0.Driver);
        Assert.Equal("file", f0.Image.Format);

        var stats = await qmp.QueryBlockstatsAsync(queryNodes: true);
        Assert.Contains(stats, s => s.NodeName == "f0");

        await qmp.BlockdevDelAsync("d0");
        await qmp.BlockdevDelAsync("f0");
        Assert.Empty(await qmp.QueryNamedBlockNodesAsync());
    });

    [Fact]
    public Task Duplicate_node_name_is_a_generic_error() => WithClientAsync(async (d, qmp) =>
    {
        await qmp.BlockdevAddAsync(BlockdevOptions.NullCo("n0", 1 << 20));
        var e = await Assert.ThrowsAsync<QmpException>(() => qmp.BlockdevAddAsync(BlockdevOptions.NullCo("n0", 1 << 20)));
        Assert.Equal(QmpErrorClass.GenericError, e.ErrorClass);
        Assert.Equal("Duplicate nodes with node-name='n0'", e.Description);
        Assert.Equal("blockdev-add", e.Command);

        // the connection is still usable
        Assert.Single(await qmp.QueryNamedBlockNodesAsync());
    });

    [Fact]
    public Task Unknown_command_is_command_not_found() => WithClientAsync(async (_, qmp) =>
    {
        var e = await Assert.ThrowsAsync<QmpException>(() => qmp.ExecuteAsync("no-such-command"));
        Assert.Equal(QmpErrorClass.CommandNotFound, e.ErrorClass);
        Assert.Equal("The command no-such-command has not been found", e.Description);
    });

    [Fact]
    public Task Raw_arguments_of_the_wrong_type_are_refused() => WithClientAsync(async (_, qmp) =>
    {
        using var args = JsonDocument.Parse("{\"node-name\": \"x\", \"size\": \"1\"}");
        var e = await Assert.ThrowsAsync<QmpException>(() => qmp.ExecuteAsync("block_resize", args.RootElement));
        Assert.Equal("Invalid parameter type for 'size', expected: integer", e.Description);
    });

    [Fact]
    public Task Blockdev_create_runs_as_a_job_with_events() => WithClientAsync(async (d, qmp) =>
    {
        var path = d.PathOf("created.qcow2");

        // 1. create the file
        using (var events = qmp.SubscribeEvents(e => e.Name == QmpEventNames.JobStatusChange))
        {
            await qmp.BlockdevCreateAsync("c1", BlockdevCreateOptions.File(path, 0));
            var statuses = new List<JobStatus>();
            await foreach (var e in events)
            {
                var change = e.DataAs(QmpJsonContext.Default.JobStatusChangeEvent);
                Assert.Equal("c1", change.Id);
                statuses.Add(change.Status);
                if (change.Status == JobStatus.Concluded)
                {
                    break;
                }
            }

            Assert.Equal(JobStatus.Created, statuses[0]);
            Assert.Contains(JobStatus.Running, statuses);
            Assert.Equal(JobStatus.Concluded, statuses[^1]);

            var job = Assert.Single(await qmp.QueryJobsAsync());
            Assert.Equal("c1", job.Id);
            Assert.Equal(JobType.Create, job.Type);
            Assert.Equal(JobStatus.Concluded, job.Status);
            Assert.Null(job.Error);

            await qmp.JobDismissAsync("c1");
            await events.WaitForJobStatusAsync("c1", JobStatus.Null, EventTimeout);
            Assert.Empty(await qmp.QueryJobsAsync());
        }

        Assert.True(File.Exists(path));

        // 2. format it as qcow2
        await qmp.BlockdevAddAsync(BlockdevOptions.File("nf", path));
        using (var events = qmp.SubscribeEvents())
        {
            await qmp.BlockdevCreateAsync("c2", BlockdevCreateOptions.Qcow2("nf", 32L << 20));
            await events.WaitForJobStatusAsync("c2", JobStatus.Concluded, EventTimeout);
            await qmp.JobDismissAsync("c2");
        }

        // 3. open it
        await qmp.BlockdevAddAsync(BlockdevOptions.Qcow2("q", "nf"));
        var node = Assert.Single(await qmp.QueryNamedBlockNodesAsync(), n => n.NodeName == "q");
        Assert.Equal(32L << 20, node.Image.VirtualSize);
    });

    [Fact]
    public Task Transaction_with_blockdev_snapshot_sync() => WithClientAsync(async (d, qmp) =>
    {
        var baseImage = d.PathOf("base.qcow2");
        var overlay = d.PathOf("overlay.qcow2");
        Tools.QemuImg("create", "-q", "-f", "qcow2", baseImage, "64M");

        await qmp.BlockdevAddAsync(BlockdevOptions.Qcow2("d0", BlockdevOptions.File(null, baseImage)));
        // qemu-storage-daemon drops a node without parents: an export keeps the overlay in use.
        await qmp.NbdServerStartUnixAsync(d.PathOf("nbd.sock"));
        await qmp.BlockExportAddAsync(BlockExportOptions.Nbd("e0", "d0", writable: true));

        await qmp.TransactionAsync(
        [
            TransactionAction.BlockdevSnapshotSync(new BlockdevSnapshotSyncArgs
            {
                NodeName = "d0", SnapshotFile = overlay, SnapshotNodeName = "s1", Format = "qcow2",
            }),
        ]);

        var nodes = await qmp.QueryNamedBlockNodesAsync(flat: true);
        var s1 = Assert.Single(nodes, n => n.NodeName == "s1");
        Assert.Equal(overlay, s1.File);
        Assert.Equal(baseImage, s1.BackingFile);
        Assert.Equal(baseImage, s1.Image.BackingFilename);
        Assert.True(Assert.Single(nodes, n => n.NodeName == "d0").ReadOnly);
        Assert.True(File.Exists(overlay));

        // A failing action aborts the whole transaction: nothing of it remains.
        var e = await Assert.ThrowsAsync<QmpException>(() => qmp.TransactionAsync(
        [
            TransactionAction.BlockDirtyBitmapAdd(new BlockDirtyBitmapAddArgs { Node = "s1", Name = "bm0" }),
            TransactionAction.BlockdevSnapshotSync(new BlockdevSnapshotSyncArgs { NodeName = "nope", SnapshotFile = d.PathOf("x.qcow2") }),
        ]));
        Assert.Equal(QmpErrorClass.GenericError, e.ErrorClass);
        Assert.Null(Assert.Single(await qmp.QueryNamedBlockNodesAsync(flat: true), n => n.NodeName == "s1").DirtyBitmaps);

        using var events = qmp.SubscribeEvents();
        await qmp.BlockExportDelAsync("e0");
        var deleted = await events.WaitAsync(QmpEventNames.BlockExportDeleted, EventTimeout);
        Assert.Equal("e0", deleted.DataAs(QmpJsonContext.Default.BlockExportDeletedEvent).Id);
        await qmp.NbdServerStopAsync();
    });

    [Fact]
    public Task Drive_backup_completes_with_block_job_events() => WithClientAsync(async (d, qmp) =>
    {
        var source = d.PathOf("src.qcow2");
        var target = d.PathOf("backup.qcow2");
        Tools.QemuImg("create", "-q", "-f", "qcow2", source, "16M");
        await qmp.BlockdevAddAsync(BlockdevOptions.Qcow2("src", BlockdevOptions.File(null, source)));
        await qmp.BlockDirtyBitmapAddAsync(new BlockDirtyBitmapAddArgs { Node = "src", Name = "bm0" });

        using var events = qmp.SubscribeEvents();
        await qmp.DriveBackupAsync(new DriveBackupArgs
        {
            JobId = "b1", Device = "src", Target = target, Format = "qcow2", Sync = MirrorSyncMode.Full,
        });
        var done = await events.WaitAsync(QmpEventNames.BlockJobCompleted, EventTimeout);
        var completed = done.DataAs(QmpJsonContext.Default.BlockJobCompletedEvent);
        Assert.Equal("b1", completed.Device);
        Assert.Equal(JobType.Backup, completed.Type);
        Assert.Equal(16L << 20, completed.Len);
        Assert.Null(completed.Error);
        Assert.True(done.Timestamp.ToDateTimeOffset() > DateTimeOffset.UtcNow.AddHours(-1) || done.Timestamp.Seconds > 0);
        Assert.True(File.Exists(target));
        Assert.Empty(await qmp.QueryBlockJobsAsync());

        var src = Assert.Single(await qmp.QueryNamedBlockNodesAsync(), n => n.NodeName == "src");
        Assert.Equal("bm0", Assert.Single(src.DirtyBitmaps!).Name);
        await qmp.BlockDirtyBitmapRemoveAsync("src", "bm0");
    });

    [Fact]
    public Task Concurrent_commands_are_matched_by_id() => WithClientAsync(async (_, qmp) =>
    {
        await qmp.BlockdevAddAsync(BlockdevOptions.NullCo("n0", 1 << 20));
        var tasks = new List<Task>();
        for (var i = 0; i < 25; i++)
        {
            tasks.Add(qmp.QueryVersionAsync());
            tasks.Add(qmp.QueryNamedBlockNodesAsync());
            tasks.Add(Assert.ThrowsAsync<QmpException>(() => qmp.BlockdevDelAsync("missing" + i)));
        }

        await Task.WhenAll(tasks);
        for (var i = 0; i < tasks.Count; i += 3)
        {
            Assert.Equal(7, ((Task<VersionInfo>)tasks[i]).Result.Qemu.Major >= 7 ? 7 : 0);
            Assert.Equal("n0", Assert.Single(((Task<IReadOnlyList<BlockDeviceInfo>>)tasks[i + 1]).Result).NodeName);
            Assert.Contains($"missing{i / 3}", ((Task<QmpException>)tasks[i + 2]).Result.Description, StringComparison.Ordinal);
        }
    });

    [Fact]
    public Task Schema_introspection() => WithClientAsync(async (_, qmp) =>
    {
        var schema = await qmp.QueryQmpSchemaAsync();
        var command = Assert.Single(schema, s => s.Name == "blockdev-snapshot-sync");
        Assert.Equal(SchemaMetaType.Command, command.MetaType);
        var args = Assert.Single(schema, s => s.Name == command.ArgType);
        Assert.Contains(args.Members!, m => m.Name == "snapshot-file" && !m.IsOptional);
        Assert.Contains(args.Members!, m => m.Name == "node-name" && m.IsOptional);
        Assert.Contains(schema, s => s.Name == QmpEventNames.JobStatusChange && s.MetaType == SchemaMetaType.Event);
    });

    [Fact]
    public async Task Quit_ends_the_daemon_and_the_connection()
    {
        await using var daemon = await QmpDaemon.StartAsync(Daemon);
        await using var qmp = await daemon.ConnectAsync();
        await qmp.QuitAsync();
        await qmp.Completion.WaitAsync(EventTimeout);
        Assert.False(qmp.IsConnected);
        await Assert.ThrowsAsync<QmpConnectionClosedException>(() => qmp.QueryVersionAsync());
        Assert.Equal(0, await daemon.WaitForExitAsync(EventTimeout));
    }

    [Fact]
    public async Task Events_stream_ends_with_the_connection()
    {
        await using var daemon = await QmpDaemon.StartAsync(Daemon);
        await using var qmp = await daemon.ConnectAsync();
        var reading = Task.Run(async () =>
        {
            var names = new List<string>();
            await foreach (var e in qmp.ReadEventsAsync())
            {
                names.Add(e.Name);
            }

            return names;
        });
        await Task.Delay(50);
        await qmp.QuitAsync();
        var seen = await reading.WaitAsync(EventTimeout);
        Assert.DoesNotContain(QmpEventNames.JobStatusChange, seen);
    }

    [Fact]
    public async Task Before_negotiation_only_qmp_capabilities_is_accepted()
    {
        await using var daemon = await QmpDaemon.StartAsync(Daemon);
        await using var qmp = await daemon.ConnectAsync(new QmpClientOptions { Negotiate = false });
        var e = await Assert.ThrowsAsync<QmpException>(() => qmp.QueryVersionAsync());
        Assert.Equal(QmpErrorClass.CommandNotFound, e.ErrorClass);
        Assert.Equal("Expecting capabilities negotiation with 'qmp_capabilities'", e.Description);
        await qmp.NegotiateCapabilitiesAsync();
        await qmp.QueryVersionAsync();
        var again = await Assert.ThrowsAsync<QmpException>(() => qmp.NegotiateCapabilitiesAsync());
        Assert.Equal("Capabilities negotiation is already complete, command ignored", again.Description);
    }
}

/// <summary>The client tests against the daemon of STRATA_QMP_DAEMON, qemu-storage-daemon by default.</summary>
public sealed class QmpClientTests : QmpClientTestsBase
{
    protected override DaemonCommand Daemon { get; } = DaemonCommand.FromEnvironment();
}
