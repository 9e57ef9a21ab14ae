namespace Strata.Block.Snapshots;

/// <summary>
/// QEMU's qmp_get_root_bs, for the commands that take one "device" string: it names a node (qemu-storage-daemon has
/// no named block backends) that no other node uses as a child (exports may use it).
/// </summary>
internal static class RootNode
{
    public static BlockNode Find(BlockGraph graph, string device)
    {
        var node = graph.Find(device) ?? throw new BlockException($"Cannot find device='{device}' nor node-name='{device}'");
        foreach (var e in node.Parents)
            if (e.Parent is BlockNode)
                throw new BlockException("Need a root block node");
        return node;
    }

    /// <summary>Drains every backend of the graph, as the transaction does, for a graph command that is not one.</summary>
    public static async ValueTask<IAsyncDisposable> DrainAllAsync(BlockGraph graph, CancellationToken ct)
    {
        var drains = new List<IAsyncDisposable>();
        try
        {
            foreach (var backend in graph.Backends())
                drains.Add(await backend.DrainAsync(ct).ConfigureAwait(false));
            return new Drains(drains);
        }
        catch
        {
            await new Drains(drains).DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    private sealed class Drains(List<IAsyncDisposable> drains) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            for (int i = drains.Count - 1; i >= 0; i--)
                await drains[i].DisposeAsync().ConfigureAwait(false);
        }
    }
}
