using Strata.Client.Tests;
using Xunit;

namespace Strata.Qmp.Server.Tests;

/// <summary>
/// The Strata.Client tests against strata-daemon, for the commands Strata implements. Each test of the base class
/// that strata-daemon can pass is listed here explicitly; the others are deliberately NOT run against strata-daemon
/// (they are not skipped: they simply are not part of this class) because they need commands Strata does not
/// implement yet:
/// <list type="bullet">
/// <item>Greeting_and_query_version — asserts that query-commands lists "transaction";</item>
/// <item>Transaction_with_blockdev_snapshot_sync — transaction, blockdev-snapshot-sync, block-dirty-bitmap-add;</item>
/// <item>Drive_backup_completes_with_block_job_events — drive-backup, block-dirty-bitmap-add/remove, query-block-jobs;</item>
/// <item>Schema_introspection — looks up blockdev-snapshot-sync and JOB_STATUS_CHANGE in the schema.</item>
/// </list>
/// (Greeting and version, and the schema, are covered against strata-daemon by <see cref="QmpDifferentialTests"/>.)
/// </summary>
public sealed class StrataClientTests
{
    private readonly Pinned _tests = new();

    /// <summary>The base class pinned to strata-daemon; not public, so xunit does not run all of its facts.</summary>
    private sealed class Pinned : QmpClientTestsBase
    {
        protected override DaemonCommand Daemon => Daemons.Strata;
    }

    [Fact]
    public Task Blockdev_create_runs_as_a_job_with_events() => _tests.Blockdev_create_runs_as_a_job_with_events();

    [Fact]
    public Task Oob_can_be_negotiated() => _tests.Oob_can_be_negotiated();

    [Fact]
    public Task Blockdev_add_file_and_qcow2_then_query_named_block_nodes() => _tests.Blockdev_add_file_and_qcow2_then_query_named_block_nodes();

    [Fact]
    public Task Duplicate_node_name_is_a_generic_error() => _tests.Duplicate_node_name_is_a_generic_error();

    [Fact]
    public Task Unknown_command_is_command_not_found() => _tests.Unknown_command_is_command_not_found();

    [Fact]
    public Task Raw_arguments_of_the_wrong_type_are_refused() => _tests.Raw_arguments_of_the_wrong_type_are_refused();

    [Fact]
    public Task Concurrent_commands_are_matched_by_id() => _tests.Concurrent_commands_are_matched_by_id();

    [Fact]
    public Task Quit_ends_the_daemon_and_the_connection() => _tests.Quit_ends_the_daemon_and_the_connection();

    [Fact]
    public Task Events_stream_ends_with_the_connection() => _tests.Events_stream_ends_with_the_connection();

    [Fact]
    public Task Before_negotiation_only_qmp_capabilities_is_accepted() => _tests.Before_negotiation_only_qmp_capabilities_is_accepted();

    [Fact]
    public Task Transaction_with_blockdev_snapshot_sync() => _tests.Transaction_with_blockdev_snapshot_sync();

    /// <summary>The client's call for Strata's name-less internal snapshot returns the generated name, which the image then holds.</summary>
    [Fact]
    public async Task Internal_snapshot_without_a_name_returns_the_generated_one()
    {
        await using var daemon = await QmpDaemon.StartAsync(Daemons.Strata);
        await using var qmp = await daemon.ConnectAsync();
        var image = daemon.PathOf("disk.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", image, "16M").EnsureSuccess();
        await qmp.BlockdevAddAsync(BlockdevOptions.Qcow2("d0", BlockdevOptions.File(null, image)));

        string first = await qmp.BlockdevSnapshotInternalSyncAsync("d0");
        string second = await qmp.BlockdevSnapshotInternalSyncAsync("d0");
        Assert.Matches("^snap-[0-9]{8}-[0-9]{6}(-[0-9]+)?$", first);
        Assert.NotEqual(first, second);
        var deleted = await qmp.BlockdevSnapshotDeleteInternalSyncAsync("d0", name: first);
        Assert.Equal(first, deleted.Name);
        await qmp.BlockdevDelAsync("d0");

        var list = QemuTools.QemuImg("snapshot", "-l", image).EnsureSuccess();
        Assert.Contains(second, list.StdOut, StringComparison.Ordinal);
        Assert.DoesNotContain(first + " ", list.StdOut, StringComparison.Ordinal);
    }
}
