using System.Buffers;
using System.Text.Json;
using Strata.Block.Bitmaps;
using Strata.Block.Transactions;

namespace Strata.Qmp.Server.Commands;

/// <summary>
/// block-dirty-bitmap-add/remove/clear/enable/disable/merge and x-debug-block-dirty-bitmap-sha256 (QEMU runs them
/// outside any transaction; so does Strata), and the factories of their transaction actions.
/// </summary>
internal static class BitmapCommands
{
    public static async ValueTask<JsonElement> AddAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        await NodeBitmaps.AddAsync(c.Daemon.Graph, args.ReqStr("node"), args.ReqStr("name"), Granularity(args),
            args.Bool("persistent") ?? false, args.Bool("disabled") ?? false, ct).ConfigureAwait(false);
        return await Args.Empty.ConfigureAwait(false);
    }

    public static async ValueTask<JsonElement> RemoveAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        await NodeBitmaps.RemoveAsync(c.Daemon.Graph, args.ReqStr("node"), args.ReqStr("name"), release: true, ct).ConfigureAwait(false);
        return await Args.Empty.ConfigureAwait(false);
    }

    public static ValueTask<JsonElement> ClearAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        NodeBitmaps.Clear(c.Daemon.Graph, args.ReqStr("node"), args.ReqStr("name"));
        return Args.Empty;
    }

    public static ValueTask<JsonElement> EnableAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        NodeBitmaps.SetEnabled(c.Daemon.Graph, args.ReqStr("node"), args.ReqStr("name"), true);
        return Args.Empty;
    }

    public static ValueTask<JsonElement> DisableAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        NodeBitmaps.SetEnabled(c.Daemon.Graph, args.ReqStr("node"), args.ReqStr("name"), false);
        return Args.Empty;
    }

    public static ValueTask<JsonElement> MergeAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        NodeBitmaps.Merge(c.Daemon.Graph, args.ReqStr("node"), args.ReqStr("target"), Sources(args.Member("bitmaps")));
        return Args.Empty;
    }

    public static ValueTask<JsonElement> Sha256Async(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        string hash = NodeBitmaps.Sha256(c.Daemon.Graph, args.ReqStr("node"), args.ReqStr("name"));
        var buffer = new ArrayBufferWriter<byte>(128);
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteString("sha256", hash);
            w.WriteEndObject();
        }

        using var doc = JsonDocument.Parse(buffer.WrittenMemory);
        return ValueTask.FromResult(doc.RootElement.Clone());
    }

    private static uint? Granularity(JsonElement args) => args.ULong("granularity") is { } g ? (uint)g : null;

    /// <summary>BlockDirtyBitmapOrStr list: a name (the target's node) or {node, name}.</summary>
    public static List<BitmapRef> Sources(JsonElement? list)
    {
        var refs = new List<BitmapRef>();
        if (list is not { ValueKind: JsonValueKind.Array } a)
            return refs;
        foreach (var item in a.EnumerateArray())
        {
            refs.Add(item.ValueKind == JsonValueKind.String
                ? new BitmapRef(null, item.GetString()!)
                : new BitmapRef(item.ReqStr("node"), item.ReqStr("name")));
        }

        return refs;
    }

    public static ITransactionAction AddAction(JsonElement a) => new DirtyBitmapAddAction(a.ReqStr("node"), a.ReqStr("name"), Granularity(a),
        a.Bool("persistent") ?? false, a.Bool("disabled") ?? false);

    public static ITransactionAction RemoveAction(JsonElement a) => new DirtyBitmapRemoveAction(a.ReqStr("node"), a.ReqStr("name"));

    public static ITransactionAction ClearAction(JsonElement a) => new DirtyBitmapClearAction(a.ReqStr("node"), a.ReqStr("name"));

    public static ITransactionAction EnableAction(JsonElement a) => new DirtyBitmapEnableAction(a.ReqStr("node"), a.ReqStr("name"), true);

    public static ITransactionAction DisableAction(JsonElement a) => new DirtyBitmapEnableAction(a.ReqStr("node"), a.ReqStr("name"), false);

    public static ITransactionAction MergeAction(JsonElement a) =>
        new DirtyBitmapMergeAction(a.ReqStr("node"), a.ReqStr("target"), Sources(a.Member("bitmaps")));
}
