using System.Text.Json.Nodes;
using Strata.Block.Drivers;
using Strata.Block.Transactions;
using Strata.Images;

namespace Strata.Block.Snapshots;

/// <summary>
/// An external snapshot of a live node (QEMU's external_snapshot_prepare/commit/abort/clean): blockdev-snapshot-sync
/// creates or opens the overlay file, blockdev-snapshot takes an overlay node added earlier; either way the overlay is
/// put in front of the node, whose users (NBD exports) follow it without noticing, and the node stays open as the
/// overlay's backing. Checks run in QEMU's order with its messages. Unlike QEMU, an overlay file this action created
/// is removed again when the transaction fails (QEMU leaves it behind); a file that existed before is never removed.
/// </summary>
public sealed class ExternalSnapshotAction : ITransactionAction
{
    private readonly SnapshotSyncRequest? _sync;
    private readonly SnapshotRequest? _overlay;

    public ExternalSnapshotAction(SnapshotSyncRequest request) => _sync = request;

    public ExternalSnapshotAction(SnapshotRequest request) => _overlay = request;

    public string Kind => _sync != null ? "blockdev-snapshot-sync" : "blockdev-snapshot";

    public async ValueTask PrepareAsync(BlockTransaction tx, CancellationToken ct)
    {
        tx.Properties.RequireIndividual(this);
        var graph = tx.Graph;
        var top = _sync != null ? graph.Lookup(_sync.Device, _sync.NodeName) : graph.Lookup(_overlay!.Node, _overlay.Node);
        top.CheckNotBacking();
        if (!top.IsReadOnly)
        {
            try
            {
                await top.FlushAsync(ct).ConfigureAwait(false);
            }
            catch (Exception e) when (e is ImageException or IOException)
            {
                // QEMU 7.2 says only "An IO error has occurred"; Strata names the node and the errno as later QEMU does.
                string why = e is IOException { HResult: > 0 and < 4096 } io
                    ? System.Runtime.InteropServices.Marshal.GetPInvokeErrorMessage(io.HResult)
                    : "Input/output error";
                throw new BlockException($"Write to node '{top.NodeName}' failed: {why}", BlockErrorKind.Generic, e);
            }
        }

        BlockNode overlay = _sync != null
            ? await OpenNewOverlayAsync(tx, top, _sync, ct).ConfigureAwait(false)
            : graph.Lookup(_overlay!.Overlay, _overlay.Overlay);

        // QEMU allows an overlay in use only by parents that do not read it as a valid image (a mirror target).
        foreach (var e in overlay.Parents)
            if ((e.Permissions & BlockPermissions.ConsistentRead) != 0)
                throw new BlockException("The overlay is already in use");
        if (overlay.BackingChild != null)
            throw new BlockException("The overlay already has a backing image");
        if (overlay is not Qcow2Node qcow)
            throw new BlockException("The overlay does not support backing images");

        var append = NodeAppend.Run(qcow, top);
        tx.Register(
            commit: () =>
            {
                // As QEMU: the old top takes no more writes once it is a backing image.
                if (!top.IsReadOnly)
                    top.ReopenReadOnly();
            },
            abort: () =>
            {
                append.Undo();
                return ValueTask.CompletedTask;
            });
    }

    /// <summary>The sync variant's checks, file creation and open; registers their undo.</summary>
    private static async ValueTask<BlockNode> OpenNewOverlayAsync(BlockTransaction tx, BlockNode top, SnapshotSyncRequest r, CancellationToken ct)
    {
        var graph = tx.Graph;
        string format = r.Format ?? "qcow2";
        if (r.NodeName != null && r.SnapshotNodeName == null)
            throw new BlockException("New overlay node-name missing");
        if (r.SnapshotNodeName != null && graph.Find(r.SnapshotNodeName) != null)
            throw new BlockException("New overlay node-name already in use");

        if (r.Mode != NewImageMode.Existing)
        {
            string backingName = r.Mode == NewImageMode.RelativePaths
                ? OverlayFile.RelativeBackingName(r.SnapshotFile, top.FileName)
                : NodeFilename.Of(top, graph);
            OverlayFile.Validate(r.SnapshotFile, format, backingName);
            CheckNotOpen(graph, r.SnapshotFile, writable: true);
            bool existed = File.Exists(r.SnapshotFile);
            // Registered first so that it is undone last, after the overlay is closed.
            tx.Register(abort: () =>
            {
                if (!existed && File.Exists(r.SnapshotFile))
                    File.Delete(r.SnapshotFile);
                return ValueTask.CompletedTask;
            });
            await OverlayFile.CreateAsync(r.SnapshotFile, format, backingName, top.Driver, top.Size, ct).ConfigureAwait(false);
        }
        else if (!OverlayFile.IsKnownFormat(format))
        {
            throw new BlockException($"Unknown driver '{format}'");
        }

        CheckNotOpen(graph, r.SnapshotFile, writable: !top.IsReadOnly);
        var options = new JsonObject { ["driver"] = format };
        if (r.SnapshotNodeName != null)
            options["node-name"] = r.SnapshotNodeName;
        options["file"] = new JsonObject { ["driver"] = "file", ["filename"] = r.SnapshotFile };
        if (format == "qcow2")
            options["backing"] = null;
        var overlay = await graph.OpenUnownedAsync(options, top.Settings with { ForceShare = false, DetectZeroes = DetectZeroes.Off }, ct)
            .ConfigureAwait(false);
        bool aborted = false;
        tx.Register(
            abort: async () =>
            {
                aborted = true;
                await graph.RemoveUnusedAsync(overlay).ConfigureAwait(false);
            },
            clean: async () =>
            {
                // QEMU drops the open's reference here: an overlay nobody took over (the node had no users) is closed.
                if (!aborted && overlay.Parents.Count == 0)
                    await graph.RemoveUnusedAsync(overlay).ConfigureAwait(false);
            });
        return overlay;
    }

    /// <summary>
    /// A file the graph has open is never truncated or opened twice for writing (QEMU's image locks say the same).
    /// </summary>
    private static void CheckNotOpen(BlockGraph graph, string path, bool writable)
    {
        string full = Path.GetFullPath(path);
        foreach (var n in graph.Nodes)
        {
            if (n is not FileNode f || Path.GetFullPath(f.FileName) != full)
                continue;
            if (writable)
                throw new BlockException("Failed to get \"write\" lock");
            if (!f.IsReadOnly)
                throw new BlockException("Failed to get shared \"write\" lock");
        }
    }
}
