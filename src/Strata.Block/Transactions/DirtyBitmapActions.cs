using Strata.Block.Bitmaps;
using Strata.Images;

namespace Strata.Block.Transactions;

/// <summary>
/// The six block-dirty-bitmap-* transaction actions, with blockdev.c's prepare / commit / abort: every one refuses
/// completion-mode "grouped" first; add is removed again on abort; remove takes the bitmap out of the image at once,
/// holds it busy and releases it at commit; clear and merge keep the old bits and put them back on abort; enable
/// and disable restore the previous state on abort.
/// </summary>
public sealed class DirtyBitmapAddAction(string node, string name, uint? granularity, bool persistent, bool disabled) : ITransactionAction
{
    public string Kind => "block-dirty-bitmap-add";

    public async ValueTask PrepareAsync(BlockTransaction tx, CancellationToken ct)
    {
        tx.Properties.RequireIndividual(this);
        await NodeBitmaps.AddAsync(tx.Graph, node, name, granularity, persistent, disabled, ct).ConfigureAwait(false);
        tx.Register(abort: async () =>
        {
            try
            {
                await NodeBitmaps.RemoveAsync(tx.Graph, node, name, release: true, CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception e) when (e is BlockException or ImageException or IOException)
            {
                // QEMU ignores a failed removal here too (its error goes nowhere).
            }
        });
    }
}

public sealed class DirtyBitmapRemoveAction(string node, string name) : ITransactionAction
{
    public string Kind => "block-dirty-bitmap-remove";

    public async ValueTask PrepareAsync(BlockTransaction tx, CancellationToken ct)
    {
        tx.Properties.RequireIndividual(this);
        var (bs, bm) = await NodeBitmaps.RemoveAsync(tx.Graph, node, name, release: false, ct).ConfigureAwait(false);
        bm.Busy = true;
        tx.Register(
            commit: () =>
            {
                bm.Busy = false;
                bs.DirtyBitmaps.Remove(bm);
            },
            abort: () =>
            {
                bm.Busy = false;
                return ValueTask.CompletedTask;
            });
    }
}

public sealed class DirtyBitmapClearAction(string node, string name) : ITransactionAction
{
    public string Kind => "block-dirty-bitmap-clear";

    public ValueTask PrepareAsync(BlockTransaction tx, CancellationToken ct)
    {
        tx.Properties.RequireIndividual(this);
        var (bm, backup) = NodeBitmaps.Clear(tx.Graph, node, name);
        tx.Register(abort: () =>
        {
            NodeBitmaps.Restore(bm, backup);
            return ValueTask.CompletedTask;
        });
        return ValueTask.CompletedTask;
    }
}

public sealed class DirtyBitmapEnableAction(string node, string name, bool enable) : ITransactionAction
{
    public string Kind => enable ? "block-dirty-bitmap-enable" : "block-dirty-bitmap-disable";

    public ValueTask PrepareAsync(BlockTransaction tx, CancellationToken ct)
    {
        tx.Properties.RequireIndividual(this);
        var (bm, set, was) = NodeBitmaps.SetEnabled(tx.Graph, node, name, enable);
        tx.Register(abort: () =>
        {
            if (was != enable)
            {
                bm.Enabled = was;
                set.RefreshEnabled();
            }
            return ValueTask.CompletedTask;
        });
        return ValueTask.CompletedTask;
    }
}

public sealed class DirtyBitmapMergeAction(string node, string target, IReadOnlyList<BitmapRef> sources) : ITransactionAction
{
    public string Kind => "block-dirty-bitmap-merge";

    public ValueTask PrepareAsync(BlockTransaction tx, CancellationToken ct)
    {
        tx.Properties.RequireIndividual(this);
        var (bm, backup) = NodeBitmaps.Merge(tx.Graph, node, target, sources);
        tx.Register(abort: () =>
        {
            NodeBitmaps.Restore(bm, backup);
            return ValueTask.CompletedTask;
        });
        return ValueTask.CompletedTask;
    }
}
