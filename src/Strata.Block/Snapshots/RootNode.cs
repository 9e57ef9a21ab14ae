namespace Strata.Block.Snapshots;

/// <summary>
/// QEMU's qmp_get_root_bs, for the commands that take one "device" string: it names a node (qemu-storage-daemon has
/// no named block backends) that no other node uses as a child (exports may use it).
/// </summary>
internal static class RootNode
{
    public static BlockNode Find(BlockGraph graph, string device)
    {
        var node = graph.Lookup(device, device);
        foreach (var e in node.Parents)
            if (e.Parent is BlockNode)
                throw new BlockException("Need a root block node");
        return node;
    }
}
