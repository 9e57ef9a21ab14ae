using Microsoft.Extensions.Logging;
using Strata.Block.Drivers;
using Strata.Block.Transactions;
using Strata.Images;
using Strata.Images.Qcow2;

namespace Strata.Block.Snapshots;

/// <summary>
/// An internal snapshot of a live qcow2 node (QEMU's internal_snapshot_prepare/abort): prepare takes the snapshot
/// while the transaction holds the graph drained; abort deletes it again by ID and name. Checks run in QEMU's order
/// with its messages. Strata's extension: without a name, a unique time-based one is generated
/// (<see cref="SnapshotNames.Unique"/>) and left in <see cref="Name"/>.
/// </summary>
public sealed class InternalSnapshotAction(string device, string? name) : ITransactionAction
{
    public string Kind => "blockdev-snapshot-internal-sync";

    /// <summary>The snapshot's name: the one asked for, or the generated one once prepared.</summary>
    public string? Name => _created ?? name;

    private string? _created;

    /// <summary>Whether the name was generated (the reply then carries it).</summary>
    public bool NameGenerated => name == null;

    public async ValueTask PrepareAsync(BlockTransaction tx, CancellationToken ct)
    {
        tx.Properties.RequireIndividual(this);
        var node = RootNode.Find(tx.Graph, device);
        if (node.IsReadOnly)
            throw new BlockException($"Device '{device}' is read only");
        if (node is not Qcow2Node qcow)
            throw new BlockException($"Block format '{node.Driver}' used by device '{device}' does not support internal snapshots");
        var image = qcow.Image;
        if (name is { Length: 0 })
            throw new BlockException("Name is empty");

        var now = DateTimeOffset.UtcNow;
        var existing = await image.GetSnapshotsAsync(ct).ConfigureAwait(false);
        string snapshotName = name ?? SnapshotNames.Unique(existing, now);
        if (Qcow2Image.FindSnapshot(existing, null, snapshotName) >= 0)
            throw new BlockException($"Snapshot with name '{snapshotName}' already exists on device '{device}'");

        // Round to microseconds as QEMU's g_get_real_time; qemu-storage-daemon's virtual clock is the host's wall
        // clock (no guest), and it records no instruction count.
        long micros = (now.UtcTicks - DateTimeOffset.UnixEpoch.UtcTicks) / 10;
        var date = DateTimeOffset.UnixEpoch.AddTicks(micros * 10);
        ulong clockNs = (ulong)micros * 1000;
        Qcow2Snapshot sn;
        try
        {
            sn = await image.CreateSnapshotAsync(new Qcow2SnapshotCreateInfo
            {
                Name = snapshotName,
                Date = date,
                VmClockNanoseconds = clockNs,
                Icount = ulong.MaxValue,
            }, ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is ImageException or IOException)
        {
            throw new BlockException($"Failed to create snapshot '{snapshotName}' on device '{device}': {Errno(e)}", BlockErrorKind.Generic, e);
        }

        _created = snapshotName;
        tx.Register(abort: async () =>
        {
            try
            {
                await image.DeleteSnapshotAsync(sn.Id, sn.Name, CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception e) when (e is ImageException or IOException)
            {
                // As QEMU: the transaction's own error is what the client gets; this one is only reported.
                tx.Graph.Log.LogError("Failed to delete snapshot with id '{Id}' and name '{Name}' on node '{Node}' in abort: {Message}",
                    sn.Id, sn.Name, device, e.Message);
            }
        });
    }

    internal static string Errno(Exception e) => e is SnapshotException s ? s.Errno : "Input/output error";
}
