using System.Text.Json;
using Strata.Block.Transactions;
using Strata.Qmp.Server.Schema;

namespace Strata.Qmp.Server.Commands;

/// <summary>
/// transaction: the actions strata-daemon knows, each a kind, its QAPI data type and a factory of its Strata.Block
/// action. Another action plugs in with one
/// entry here, in the place QEMU's TransactionActionKind gives it.
/// </summary>
internal static class TransactionCommands
{
    public static IReadOnlyList<(string Kind, QapiObject Data, Func<JsonElement, ITransactionAction> Create)> Actions { get; } =
    [
        ("abort", SnapshotTypes.Abort, _ => new AbortAction()),
        ("block-dirty-bitmap-add", BitmapTypes.BlockDirtyBitmapAdd, BitmapCommands.AddAction),
        ("block-dirty-bitmap-remove", BitmapTypes.BlockDirtyBitmap, BitmapCommands.RemoveAction),
        ("block-dirty-bitmap-clear", BitmapTypes.BlockDirtyBitmap, BitmapCommands.ClearAction),
        ("block-dirty-bitmap-enable", BitmapTypes.BlockDirtyBitmap, BitmapCommands.EnableAction),
        ("block-dirty-bitmap-disable", BitmapTypes.BlockDirtyBitmap, BitmapCommands.DisableAction),
        ("block-dirty-bitmap-merge", BitmapTypes.BlockDirtyBitmapMerge, BitmapCommands.MergeAction),
        ("blockdev-backup", BackupTypes.BlockdevBackup, BackupCommands.BlockdevBackupAction),
        ("blockdev-snapshot", SnapshotTypes.BlockdevSnapshot, SnapshotCommands.OverlayAction),
        ("blockdev-snapshot-internal-sync", SnapshotTypes.BlockdevSnapshotInternal, SnapshotCommands.InternalAction),
        ("blockdev-snapshot-sync", SnapshotTypes.BlockdevSnapshotSync, SnapshotCommands.SyncAction),
        ("drive-backup", BackupTypes.DriveBackup, BackupCommands.DriveBackupAction),
    ];

    public static QapiObject Arguments { get; } = SnapshotTypes.TransactionArgs(Actions.Select(a => (a.Kind, a.Data)).ToArray());

    public static async ValueTask<JsonElement> TransactionAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        var actions = new List<ITransactionAction>();
        foreach (var item in args.GetProperty("actions").EnumerateArray())
        {
            string kind = item.GetProperty("type").GetString()!;
            var entry = Actions.First(a => a.Kind == kind);
            actions.Add(entry.Create(item.GetProperty("data")));
        }

        var properties = args.Member("properties") is { } p && p.Str("completion-mode") == "grouped"
            ? new Strata.Block.Transactions.TransactionProperties { CompletionMode = Strata.Block.Transactions.ActionCompletionMode.Grouped }
            : Strata.Block.Transactions.TransactionProperties.Default;
        try
        {
            await BlockTransaction.RunAsync(c.Daemon.Graph, actions, properties, c.Daemon.Jobs, ct).ConfigureAwait(false);
        }
        finally
        {
            // Jobs a failed transaction cancelled finish closing their nodes before the reply.
            await BackupCommands.SettleAsync(c, actions).ConfigureAwait(false);
        }
        return await Args.Empty.ConfigureAwait(false);
    }
}
