using System.Buffers;
using System.Text.Json;
using Strata.Block.Snapshots;
using Strata.Block.Transactions;

namespace Strata.Qmp.Server.Commands;

/// <summary>
/// blockdev-snapshot-sync, blockdev-snapshot and blockdev-snapshot-internal-sync: each a transaction of one action, as in
/// QEMU (running jobs pause once at its drain); blockdev-snapshot-delete-internal-sync, which is not.
/// </summary>
internal static class SnapshotCommands
{
    public static async ValueTask<JsonElement> BlockdevSnapshotSyncAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        await BlockTransaction.RunAsync(c.Daemon.Graph, [SyncAction(args)], jobs: c.Daemon.Jobs, ct: ct).ConfigureAwait(false);
        return await Args.Empty.ConfigureAwait(false);
    }

    public static async ValueTask<JsonElement> BlockdevSnapshotAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        await BlockTransaction.RunAsync(c.Daemon.Graph, [OverlayAction(args)], jobs: c.Daemon.Jobs, ct: ct).ConfigureAwait(false);
        return await Args.Empty.ConfigureAwait(false);
    }

    public static async ValueTask<JsonElement> BlockdevSnapshotInternalSyncAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        var action = (InternalSnapshotAction)InternalAction(args);
        await BlockTransaction.RunAsync(c.Daemon.Graph, [action], jobs: c.Daemon.Jobs, ct: ct).ConfigureAwait(false);
        if (!action.NameGenerated)
            return await Args.Empty.ConfigureAwait(false);
        return Write(w => w.WriteString("name", action.Name));
    }

    public static async ValueTask<JsonElement> BlockdevSnapshotDeleteInternalSyncAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        var sn = await InternalSnapshotDelete.RunAsync(c.Daemon.Graph, args.ReqStr("device"), args.Str("id"), args.Str("name"), ct)
            .ConfigureAwait(false);
        // SnapshotInfo, members in schema order (the writer prints them in QEMU's order).
        return Write(w =>
        {
            w.WriteString("id", sn.Id);
            w.WriteString("name", sn.Name);
            w.WriteNumber("vm-state-size", sn.VmStateSize);
            w.WriteNumber("date-sec", sn.DateSeconds);
            w.WriteNumber("date-nsec", sn.DateNanoseconds);
            w.WriteNumber("vm-clock-sec", sn.VmClockNanoseconds / 1_000_000_000);
            w.WriteNumber("vm-clock-nsec", sn.VmClockNanoseconds % 1_000_000_000);
            if (sn.Icount != ulong.MaxValue)
                w.WriteNumber("icount", sn.Icount);
        });
    }

    public static ITransactionAction InternalAction(JsonElement a) => new InternalSnapshotAction(a.ReqStr("device"), a.Str("name"));

    private static JsonElement Write(Action<Utf8JsonWriter> members)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            members(w);
            w.WriteEndObject();
        }

        using var doc = JsonDocument.Parse(buffer.WrittenMemory);
        return doc.RootElement.Clone();
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
