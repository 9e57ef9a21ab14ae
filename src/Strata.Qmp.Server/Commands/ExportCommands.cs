using System.Text.Json;
using System.Text.Json.Nodes;
using Strata.Block;
using Strata.Server;

namespace Strata.Qmp.Server.Commands;

/// <summary>nbd-server-start/add/remove/stop, block-export-add/del, query-block-exports.</summary>
internal static class ExportCommands
{
    public static async ValueTask<JsonElement> NbdServerStartAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        if (c.Daemon.Nbd is not null)
        {
            throw new BlockException("NBD server already running");
        }

        var addr = args.Member("addr")!.Value;
        var data = addr.Member("data")!.Value;
        NbdAddress address = addr.ReqStr("type") switch
        {
            "unix" => new UnixNbdAddress(data.ReqStr("path")),
            "inet" => new InetNbdAddress(data.ReqStr("host"), data.ReqStr("port"), data.Bool("ipv4"), data.Bool("ipv6"), data.Bool("numeric") ?? false),
            var t => throw new BlockException($"strata-daemon does not support {t} socket addresses"),
        };
        if (args.Str("tls-creds") is not null || args.Str("tls-authz") is not null)
        {
            throw new BlockException("TLS is not supported by strata-daemon");
        }

        await c.Daemon.StartNbdServerAsync(address, (uint)(args.ULong("max-connections") ?? 0), ct).ConfigureAwait(false);
        return await Args.Empty.ConfigureAwait(false);
    }

    public static async ValueTask<JsonElement> NbdServerStopAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        await c.Daemon.StopNbdServerAsync(ct).ConfigureAwait(false);
        return await Args.Empty.ConfigureAwait(false);
    }

    public static ValueTask<JsonElement> BlockExportAddAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        var type = args.ReqStr("type");
        if (type != "nbd")
        {
            throw new BlockException($"Export type '{type}' is not supported by strata-daemon");
        }

        c.Daemon.AddExport(ExportRequest.Read(new BlockOptions(JsonObject.Create(args)!)));
        return Args.Empty;
    }

    public static async ValueTask<JsonElement> BlockExportDelAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        await c.Daemon.DeleteExportAsync(args.ReqStr("id"), args.Str("mode") == "hard", ct).ConfigureAwait(false);
        return await Args.Empty.ConfigureAwait(false);
    }

    /// <summary>The deprecated nbd-server-add: the node by device (node) name, the export id is the export name.</summary>
    public static ValueTask<JsonElement> NbdServerAddAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        var device = args.ReqStr("device");
        var node = c.Daemon.Graph.Get(device);
        var name = args.Str("name") ?? device;
        c.Daemon.AddExport(new ExportRequest(
            Id: name,
            NodeName: node.NodeName,
            Name: name,
            Description: args.Str("description"),
            // nbd-server-add quietly exports a read-only node read-only
            Writable: (args.Bool("writable") ?? false) && !node.IsReadOnly)
        {
            Bitmaps = args.Str("bitmap") is { } bitmap ? [new Strata.Block.Bitmaps.BitmapRef(null, bitmap)] : [],
        });
        return Args.Empty;
    }

    public static async ValueTask<JsonElement> NbdServerRemoveAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        await c.Daemon.DeleteExportAsync(args.ReqStr("name"), args.Str("mode") == "hard", ct).ConfigureAwait(false);
        return await Args.Empty.ConfigureAwait(false);
    }

    public static ValueTask<JsonElement> QueryBlockExportsAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        // QEMU keeps its exports newest first.
        var list = c.Daemon.Exports.Reverse().Select(e => new BlockExportInfo
        {
            Id = e.Id,
            Type = BlockExportType.Nbd,
            NodeName = e.NodeName,
            ShuttingDown = e.ShuttingDown,
        }).ToList();
        return ValueTask.FromResult(Args.Value(list, QmpJsonContext.Default.ListBlockExportInfo));
    }
}
