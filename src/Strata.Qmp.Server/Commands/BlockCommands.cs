using System.Buffers;
using System.Text.Json;
using System.Text.Json.Nodes;
using Strata.Block;
using Strata.Block.Drivers;
using Strata.Images;
using Strata.Images.Qcow2;

namespace Strata.Qmp.Server.Commands;

/// <summary>blockdev-add/del, block_resize and the node queries.</summary>
internal static class BlockCommands
{
    public static async ValueTask<JsonElement> BlockdevAddAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        var options = args.ValueKind == JsonValueKind.Object ? JsonObject.Create(args)! : [];
        await c.Daemon.Graph.AddAsync(options, keyval: false, ct).ConfigureAwait(false);
        return await Args.Empty.ConfigureAwait(false);
    }

    public static async ValueTask<JsonElement> BlockdevDelAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        await c.Daemon.Graph.DeleteAsync(args.ReqStr("node-name")).ConfigureAwait(false);
        return await Args.Empty.ConfigureAwait(false);
    }

    /// <summary>qmp_block_resize: the node by device or node-name and the size checked here, the rest in <see cref="NodeResize"/>.</summary>
    public static async ValueTask<JsonElement> BlockResizeAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        string? device = args.Str("device");
        string? nodeName = args.Str("node-name");
        long size = args.Long("size")!.Value;
        var node = c.Daemon.Graph.Lookup(device, nodeName);
        if (size < 0)
        {
            throw new QmpException(QmpError.Generic("Parameter 'size' expects a >0 size"));
        }

        await NodeResize.RunAsync(node, size, device, ct).ConfigureAwait(false);
        return await Args.Empty.ConfigureAwait(false);
    }

    /// <summary>qsd has no block backends with device names: the list is empty.</summary>
    public static ValueTask<JsonElement> QueryBlockAsync(QmpCommandContext c, JsonElement args, CancellationToken ct) => Args.EmptyList;

    public static ValueTask<JsonElement> QueryBlockstatsAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        if (args.Bool("query-nodes") != true)
        {
            return Args.EmptyList; // statistics of named block backends: qsd has none
        }

        var list = NodeInfo.InNamingOrder(c.Daemon.Graph).Select(NodeInfo.Stats).ToList();
        return ValueTask.FromResult(Args.Value(list, QmpJsonContext.Default.ListBlockStats));
    }

    /// <summary>QEMU builds the list by prepending: the node named last comes first.</summary>
    public static async ValueTask<JsonElement> QueryNamedBlockNodesAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        bool flat = args.Bool("flat") ?? false;
        var nodes = NodeInfo.InNamingOrder(c.Daemon.Graph);
        nodes.Reverse();
        // Internal snapshots are listed from the table in memory: read it where nothing has yet.
        foreach (var n in nodes)
            if (n is Qcow2Node q && q.Image.LoadedSnapshots == null)
                await q.Image.GetSnapshotsAsync(ct).ConfigureAwait(false);
        var directories = new Dictionary<BlockNode, IReadOnlyList<BitmapDirectoryEntry>>();
        foreach (var n in nodes)
            if (n is Qcow2Node q)
                directories[n] = await q.Image.ReadBitmapDirectoryAsync(ct).ConfigureAwait(false);
        var list = nodes.Select(n => NodeInfo.DeviceInfo(c.Daemon.Graph, n, flat, directories)).ToList();
        return Args.Value(list, QmpJsonContext.Default.ListBlockDeviceInfo);
    }

    /// <summary>x-debug-query-block-graph, numbered and ordered as QEMU's xdbg_graph does it.</summary>
    public static ValueTask<JsonElement> QueryBlockGraphAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        var ids = new Dictionary<object, long>(ReferenceEqualityComparer.Instance);
        long Id(object o)
        {
            if (!ids.TryGetValue(o, out var id))
            {
                id = ids.Count + 1;
                ids[o] = id;
            }

            return id;
        }

        var nodes = new List<(long Id, string Type, string Name)>();
        var edges = new List<(long Parent, long Child, string Name, BlockPermissions Perm, BlockPermissions Shared)>();
        void AddEdges(object parent, IEnumerable<BlockEdge> children)
        {
            foreach (var e in children)
            {
                edges.Add((Id(parent), Id(e.Child), e.Role, e.Permissions, e.Shared));
            }
        }

        foreach (var export in c.Daemon.Exports)
        {
            nodes.Add((Id(export.Backend), "block-backend", ""));
            var root = export.Backend.Root;
            var edge = root.Parents.FirstOrDefault(p => ReferenceEquals(p.Parent, export.Backend));
            if (edge is not null)
            {
                AddEdges(export.Backend, [edge]);
            }
        }

        foreach (var n in NodeInfo.InNamingOrder(c.Daemon.Graph))
        {
            nodes.Add((Id(n), "block-driver", n.NodeName));
            AddEdges(n, n.Children.Reverse()); // QEMU keeps children newest first
        }

        nodes.Reverse();
        edges.Reverse();
        var buffer = new ArrayBufferWriter<byte>(1024);
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteStartArray("nodes");
            foreach (var (id, type, name) in nodes)
            {
                w.WriteStartObject();
                w.WriteNumber("id", id);
                w.WriteString("type", type);
                w.WriteString("name", name);
                w.WriteEndObject();
            }

            w.WriteEndArray();
            w.WriteStartArray("edges");
            foreach (var (parent, child, name, perm, shared) in edges)
            {
                w.WriteStartObject();
                w.WriteNumber("parent", parent);
                w.WriteNumber("child", child);
                w.WriteString("name", name);
                WritePerms(w, "perm", perm);
                WritePerms(w, "shared-perm", shared);
                w.WriteEndObject();
            }

            w.WriteEndArray();
            w.WriteEndObject();
        }

        using var doc = JsonDocument.Parse(buffer.WrittenMemory);
        return ValueTask.FromResult(doc.RootElement.Clone());
    }

    /// <summary>QEMU prepends each permission in enum order, so the list comes out highest bit first.</summary>
    private static void WritePerms(Utf8JsonWriter w, string name, BlockPermissions p)
    {
        w.WriteStartArray(name);
        if ((p & BlockPermissions.Resize) != 0) w.WriteStringValue("resize");
        if ((p & BlockPermissions.WriteUnchanged) != 0) w.WriteStringValue("write-unchanged");
        if ((p & BlockPermissions.Write) != 0) w.WriteStringValue("write");
        if ((p & BlockPermissions.ConsistentRead) != 0) w.WriteStringValue("consistent-read");
        w.WriteEndArray();
    }
}
