namespace Strata.Block;

/// <summary>A parent's use of a node: which role the node plays for it and which permissions it takes and shares.</summary>
public sealed class BlockEdge
{
    internal BlockEdge(IBlockParent parent, BlockNode child, string role, BlockPermissions perm, BlockPermissions shared, ChildRole childRole = ChildRole.None)
    {
        Parent = parent;
        Child = child;
        Role = role;
        Permissions = perm;
        Shared = shared;
        ChildRole = childRole;
    }

    public IBlockParent Parent { get; }
    public BlockNode Child { get; }
    /// <summary>"file", "backing", "root" (a backend), ...</summary>
    public string Role { get; }
    public BlockPermissions Permissions { get; internal set; }
    public BlockPermissions Shared { get; internal set; }
    /// <summary>For a node's child: what the child is to it, which decides the permissions (none for a backend's root).</summary>
    public ChildRole ChildRole { get; }

    /// <summary>Detaches this edge from its child; the child's permissions (and image locks) shrink accordingly.</summary>
    public void Release() => Child.RemoveParent(this);
}

/// <summary>Something that uses nodes: another node, or a backend (an export, a job).</summary>
public interface IBlockParent
{
    /// <summary>How QEMU names it in permission errors: "node 'd1'", "block device 'exp0'".</summary>
    string Description { get; }
}
