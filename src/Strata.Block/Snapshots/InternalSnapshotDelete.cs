using Strata.Block.Drivers;
using Strata.Images;
using Strata.Images.Qcow2;

namespace Strata.Block.Snapshots;

/// <summary>
/// blockdev-snapshot-delete-internal-sync (QEMU's qmp_blockdev_snapshot_delete_internal_sync): deletes an internal
/// snapshot of a live root node, found by ID, by name or by both, with the graph drained. Returns the deleted entry.
/// </summary>
public static class InternalSnapshotDelete
{
    public static async ValueTask<Qcow2Snapshot> RunAsync(BlockGraph graph, string device, string? id, string? name,
        CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(graph);
        var node = RootNode.Find(graph, device);
        if (id == null && name == null)
            throw new BlockException("Name or id must be provided");
        // raw falls back to its file, which has no snapshots either.
        if (node is not Qcow2Node qcow)
            throw new BlockException("Failed to get a snapshot list: Operation not supported");

        await using var drained = (await graph.DrainAllAsync(ct).ConfigureAwait(false)).ConfigureAwait(false);
        var image = qcow.Image;
        var list = await image.GetSnapshotsAsync(ct).ConfigureAwait(false);
        int index = Qcow2Image.FindSnapshot(list, id, name);
        if (index < 0)
            throw new BlockException($"Snapshot with id '{id ?? "null"}' and name '{name ?? "null"}' does not exist on device '{device}'");
        // QEMU gets EPERM from its first write, the new snapshot table.
        if (node.IsReadOnly)
            throw new BlockException("Failed to remove snapshot from snapshot list: Operation not permitted");
        try
        {
            return await image.DeleteSnapshotAsync(id, name, ct).ConfigureAwait(false);
        }
        catch (SnapshotException e)
        {
            throw new BlockException(e.Message, BlockErrorKind.Generic, e);
        }
        catch (Exception e) when (e is ImageException or IOException)
        {
            throw new BlockException($"Input/output error: {e.Message}", BlockErrorKind.Generic, e);
        }
    }
}
