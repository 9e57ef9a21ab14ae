using Strata.Block.Drivers;

namespace Strata.Block.Snapshots;

/// <summary>
/// QEMU's bdrv_append: <c>top</c> becomes the backing of <c>overlay</c>, and every user of <c>top</c> (exports, jobs)
/// now uses <c>overlay</c>. Nothing is closed: <c>top</c> stays open behind the overlay. Undone by <see cref="UndoAsync"/>.
/// Call drained.
/// </summary>
internal sealed class NodeAppend
{
    private readonly Qcow2Node _overlay;
    private readonly BlockNode _top;
    private readonly List<BlockBackend> _moved = [];
    private bool _backingAttached;

    private NodeAppend(Qcow2Node overlay, BlockNode top)
    {
        _overlay = overlay;
        _top = top;
    }

    public static NodeAppend Run(Qcow2Node overlay, BlockNode top)
    {
        if (ReferenceEquals(overlay, top) || IsBelow(overlay, top))
            throw new BlockException($"Making '{top.NodeName}' a backing child of '{overlay.NodeName}' would create a cycle");
        var users = top.Parents.ToArray();
        foreach (var e in users)
            if (e.Parent is not BlockBackend)
                throw new BlockException($"Node '{top.NodeName}' is used as '{e.Role}' child of {e.Parent.Description}: strata-daemon cannot snapshot it");
        var append = new NodeAppend(overlay, top);
        try
        {
            BlockGraph.AttachBacking(overlay, top);
            append._backingAttached = true;
            foreach (var e in users)
            {
                var backend = (BlockBackend)e.Parent;
                backend.ReplaceRoot(overlay);
                append._moved.Add(backend);
            }
        }
        catch
        {
            append.Undo();
            throw;
        }
        return append;
    }

    /// <summary>True when <paramref name="node"/> is somewhere below <paramref name="top"/> (as a child of any role).</summary>
    private static bool IsBelow(BlockNode node, BlockNode top)
    {
        foreach (var e in top.Children)
            if (ReferenceEquals(e.Child, node) || IsBelow(node, e.Child))
                return true;
        return false;
    }

    /// <summary>Puts every user back on the old top and detaches it from the overlay.</summary>
    public void Undo()
    {
        for (int i = _moved.Count - 1; i >= 0; i--)
            _moved[i].ReplaceRoot(_top);
        _moved.Clear();
        if (_backingAttached)
        {
            foreach (var e in _top.Parents.ToArray())
                if (ReferenceEquals(e.Parent, _overlay) && e.Role == "backing")
                    e.Release();
            _overlay.AttachBacking(null);
            _backingAttached = false;
        }
    }
}
