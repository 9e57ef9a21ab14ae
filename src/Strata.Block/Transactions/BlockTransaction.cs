namespace Strata.Block.Transactions;

/// <summary>
/// A graph change as an undo log (QEMU's util/transactions.c shape): every action's prepare registers records with
/// commit / abort / clean steps; finishing runs the commits in order, failing runs the aborts in reverse; clean runs
/// last either way. Every backend of the graph stays drained from before the first prepare until after the last clean,
/// so requests in flight finish first and new ones wait, and no client sees a half-done change.
/// A single graph command (blockdev-snapshot-sync alone) is a transaction of one action.
/// </summary>
public sealed class BlockTransaction
{
    private readonly List<Record> _log = [];

    private BlockTransaction(BlockGraph graph, TransactionProperties properties)
    {
        Graph = graph;
        Properties = properties;
    }

    public BlockGraph Graph { get; }

    public TransactionProperties Properties { get; }

    private sealed record Record(Action? Commit, Func<ValueTask>? Abort, Func<ValueTask>? Clean);

    /// <summary>
    /// Registers one step of a prepare. <paramref name="commit"/> must not fail (it swaps pointers);
    /// <paramref name="abort"/> undoes what the step did; <paramref name="clean"/> releases what the step held.
    /// </summary>
    public void Register(Action? commit = null, Func<ValueTask>? abort = null, Func<ValueTask>? clean = null) =>
        _log.Add(new Record(commit, abort, clean));

    /// <summary>Runs <paramref name="actions"/> all or nothing; throws the first prepare's error after rolling back.</summary>
    public static async ValueTask RunAsync(BlockGraph graph, IReadOnlyList<ITransactionAction> actions,
        TransactionProperties? properties = null, CancellationToken ct = default)
    {
        var tx = new BlockTransaction(graph, properties ?? TransactionProperties.Default);
        await using var drained = (await graph.DrainAllAsync(ct).ConfigureAwait(false)).ConfigureAwait(false);
        await tx.PrepareAllAsync(actions, ct).ConfigureAwait(false);
    }

    private async ValueTask PrepareAllAsync(IReadOnlyList<ITransactionAction> actions, CancellationToken ct)
    {
        try
        {
            foreach (var action in actions)
                await action.PrepareAsync(this, ct).ConfigureAwait(false);
        }
        catch
        {
            for (int i = _log.Count - 1; i >= 0; i--)
                if (_log[i].Abort is { } abort)
                    await abort().ConfigureAwait(false);
            await CleanAsync().ConfigureAwait(false);
            throw;
        }
        foreach (var r in _log)
            r.Commit?.Invoke();
        await CleanAsync().ConfigureAwait(false);
    }

    private async ValueTask CleanAsync()
    {
        foreach (var r in _log)
            if (r.Clean is { } clean)
                await clean().ConfigureAwait(false);
        _log.Clear();
    }
}
