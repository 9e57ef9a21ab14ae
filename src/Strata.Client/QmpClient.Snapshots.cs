using Strata.Qmp;

namespace Strata.Client;

// blockdev-snapshot-sync, blockdev-snapshot, blockdev-snapshot-internal-sync,
// blockdev-snapshot-delete-internal-sync, transaction.
public sealed partial class QmpClient
{
    /// <summary>Creates an overlay file and makes it the new top of a node (blockdev-snapshot-sync).</summary>
    public Task BlockdevSnapshotSyncAsync(BlockdevSnapshotSyncArgs args, CancellationToken cancellationToken = default) =>
        RunAsync("blockdev-snapshot-sync", args, Ctx.BlockdevSnapshotSyncArgs, cancellationToken);

    /// <summary>Makes an existing node the overlay of another (blockdev-snapshot).</summary>
    public Task BlockdevSnapshotAsync(string node, string overlay, CancellationToken cancellationToken = default) =>
        RunAsync("blockdev-snapshot", new BlockdevSnapshotArgs { Node = node, Overlay = overlay }, Ctx.BlockdevSnapshotArgs, cancellationToken);

    /// <summary>Takes an internal snapshot (blockdev-snapshot-internal-sync).</summary>
    public Task BlockdevSnapshotInternalSyncAsync(string device, string name, CancellationToken cancellationToken = default) =>
        RunAsync("blockdev-snapshot-internal-sync", new BlockdevSnapshotInternalArgs { Device = device, Name = name },
            Ctx.BlockdevSnapshotInternalArgs, cancellationToken);

    /// <summary>
    /// strata-daemon's extension: an internal snapshot with a generated unique name (snap-YYYYMMDD-HHMMSS[-N]), which
    /// is returned. qemu-storage-daemon refuses the call ("Parameter 'name' is missing").
    /// </summary>
    public async Task<string> BlockdevSnapshotInternalSyncAsync(string device, CancellationToken cancellationToken = default) =>
        (await ExecuteAsync("blockdev-snapshot-internal-sync", new BlockdevSnapshotInternalArgs { Device = device },
            Ctx.BlockdevSnapshotInternalArgs, Ctx.GeneratedSnapshotName, cancellationToken).ConfigureAwait(false)).Name;

    /// <summary>Deletes an internal snapshot by id and/or name; returns what it was.</summary>
    public Task<SnapshotInfo> BlockdevSnapshotDeleteInternalSyncAsync(
        string device, string? id = null, string? name = null, CancellationToken cancellationToken = default) =>
        ExecuteAsync("blockdev-snapshot-delete-internal-sync", new BlockdevSnapshotDeleteInternalArgs { Device = device, Id = id, Name = name },
            Ctx.BlockdevSnapshotDeleteInternalArgs, Ctx.SnapshotInfo, cancellationToken);

    /// <summary>Runs actions atomically (transaction): all succeed or none has effect.</summary>
    public Task TransactionAsync(IReadOnlyList<TransactionAction> actions, TransactionProperties? properties = null, CancellationToken cancellationToken = default) =>
        RunAsync("transaction", new TransactionArgs { Actions = actions, Properties = properties }, Ctx.TransactionArgs, cancellationToken);

    public Task TransactionAsync(params TransactionAction[] actions) => TransactionAsync(actions, null, CancellationToken.None);
}
