namespace Strata.Block.Transactions;

/// <summary>The "abort" action: fails in prepare so that the whole transaction is rolled back (for tests and managers).</summary>
public sealed class AbortAction : ITransactionAction
{
    public string Kind => "abort";

    public ValueTask PrepareAsync(BlockTransaction transaction, CancellationToken ct) =>
        throw new BlockException("Transaction aborted using Abort action");
}
