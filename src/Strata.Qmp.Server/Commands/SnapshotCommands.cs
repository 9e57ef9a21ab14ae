using System.Text.Json;
using Strata.Block.Snapshots;
using Strata.Block.Transactions;

namespace Strata.Qmp.Server.Commands;

/// <summary>blockdev-snapshot-sync and blockdev-snapshot: each a transaction of one action, as in QEMU.</summary>
internal static class SnapshotCommands
{
    public static async ValueTask<JsonElement> BlockdevSnapshotSyncAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        await BlockTransaction.RunAsync(c.Daemon.Graph, [SyncAction(args)], ct: ct).ConfigureAwait(false);
        return await Args.Empty.ConfigureAwait(false);
    }

    public static async ValueTask<JsonElement> BlockdevSnapshotAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        await BlockTransaction.RunAsync(c.Daemon.Graph, [OverlayAction(args)], ct: ct).ConfigureAwait(false);
        return await Args.Empty.ConfigureAwait(false);
    }

    public static ITransactionAction SyncAction(JsonElement a) => new ExternalSnapshotAction(new SnapshotSyncRequest(
        a.Str("device"), a.Str("node-name"), a.ReqStr("snapshot-file"), a.Str("snapshot-node-name"), a.Str("format"),
        a.Str("mode") switch
        {
            "existing" => Strata.Block.Snapshots.NewImageMode.Existing,
            "relative-paths" => Strata.Block.Snapshots.NewImageMode.RelativePaths,
            _ => Strata.Block.Snapshots.NewImageMode.AbsolutePaths,
        }));

    public static ITransactionAction OverlayAction(JsonElement a) =>
        new ExternalSnapshotAction(new SnapshotRequest(a.ReqStr("node"), a.ReqStr("overlay")));
}
