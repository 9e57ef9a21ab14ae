namespace Strata.Block.Transactions;

/// <summary>
/// One action of a transaction (QEMU's TransactionAction): its prepare does everything that can fail and registers,
/// on the transaction's undo log, what finishing it takes (commit), what undoing it takes (abort) and what is left to
/// release either way (clean).
/// </summary>
public interface ITransactionAction
{
    /// <summary>The action's name in the schema ("blockdev-snapshot-sync"), for messages.</summary>
    string Kind { get; }

    /// <summary>
    /// Checks and prepares the action. Expects the graph drained by the transaction. Guarantees that, when it throws,
    /// whatever it registered before throwing is enough to undo it.
    /// </summary>
    ValueTask PrepareAsync(BlockTransaction transaction, CancellationToken ct);
}

/// <summary>transaction's "completion-mode": whether jobs started by the actions finish together.</summary>
public enum ActionCompletionMode { Individual, Grouped }

/// <summary>transaction's "properties".</summary>
public sealed record TransactionProperties
{
    public ActionCompletionMode CompletionMode { get; init; } = ActionCompletionMode.Individual;

    public static TransactionProperties Default { get; } = new();

    /// <summary>
    /// QEMU's action_check_completion_mode: actions that start no job refuse "grouped", with the action named.
    /// </summary>
    public void RequireIndividual(ITransactionAction action)
    {
        if (CompletionMode != ActionCompletionMode.Individual)
            throw new BlockException($"Action '{action.Kind}' does not support Transaction property completion-mode = grouped");
    }
}
