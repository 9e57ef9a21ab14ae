namespace Strata.Block;

/// <summary>What a parent does with a node (and what it lets others do), as QEMU's BLK_PERM_* bits.</summary>
[Flags]
public enum BlockPermissions
{
    None = 0,
    ConsistentRead = 1,
    Write = 2,
    WriteUnchanged = 4,
    Resize = 8,
    All = ConsistentRead | Write | WriteUnchanged | Resize,
}

public static class BlockPermissionNames
{
    /// <summary>QEMU's spelling: "consistent read, write, write unchanged, resize".</summary>
    public static string Describe(BlockPermissions p)
    {
        var names = new List<string>(4);
        if ((p & BlockPermissions.ConsistentRead) != 0) names.Add("consistent read");
        if ((p & BlockPermissions.Write) != 0) names.Add("write");
        if ((p & BlockPermissions.WriteUnchanged) != 0) names.Add("write unchanged");
        if ((p & BlockPermissions.Resize) != 0) names.Add("resize");
        return string.Join(", ", names);
    }
}

/// <summary>What a child is to its parent, as QEMU's BdrvChildRole: it decides the permissions the parent takes on it.</summary>
[Flags]
public enum ChildRole
{
    None = 0,
    /// <summary>The child's data is the parent's data (raw with offset/size, qcow2's file).</summary>
    Data = 1,
    /// <summary>The parent keeps metadata in the child (qcow2's file).</summary>
    Metadata = 2,
    /// <summary>The parent passes requests through unchanged (raw without offset/size).</summary>
    Filtered = 4,
    /// <summary>A backing file: read for unallocated ranges.</summary>
    Cow = 8,
    Image = Data | Metadata,
}

/// <summary>QEMU's default child permissions (block.c bdrv_default_perms and its helpers).</summary>
public static class PermissionRules
{
    /// <summary>Permissions a filter forwards: all of them.</summary>
    private const BlockPermissions Passthrough = BlockPermissions.All;

    /// <summary>
    /// What a node whose parents together take <paramref name="perm"/> and share <paramref name="shared"/> takes on a child
    /// in <paramref name="role"/>. <paramref name="readOnly"/>: the node is read-only; <paramref name="noIo"/>: it is open
    /// only for its metadata (qemu-img info).
    /// </summary>
    public static (BlockPermissions Perm, BlockPermissions Shared) Default(ChildRole role, BlockPermissions perm, BlockPermissions shared,
        bool readOnly, bool noIo = false)
    {
        if ((role & ChildRole.Filtered) != 0)
            return Filter(perm, shared);
        if ((role & ChildRole.Cow) != 0)
            return Cow(perm, shared);
        return Storage(role, perm, shared, readOnly, noIo);
    }

    private static (BlockPermissions, BlockPermissions) Filter(BlockPermissions perm, BlockPermissions shared) =>
        (perm & Passthrough, (shared & Passthrough) | (BlockPermissions.All & ~Passthrough));

    /// <summary>A backing file is only read, and only if the parent reads; it may change under a parent that lets others write.</summary>
    private static (BlockPermissions, BlockPermissions) Cow(BlockPermissions perm, BlockPermissions shared)
    {
        var nperm = perm & BlockPermissions.ConsistentRead;
        var nshared = (shared & BlockPermissions.Write) != 0 ? BlockPermissions.Write | BlockPermissions.Resize : BlockPermissions.None;
        return (nperm, nshared | BlockPermissions.ConsistentRead | BlockPermissions.WriteUnchanged);
    }

    private static (BlockPermissions, BlockPermissions) Storage(ChildRole role, BlockPermissions perm, BlockPermissions shared, bool readOnly, bool noIo)
    {
        (perm, shared) = Filter(perm, shared);
        if ((role & ChildRole.Metadata) != 0)
        {
            // A format driver may write metadata even when nobody writes data, and needs it consistent.
            if (!readOnly)
                perm |= BlockPermissions.Write | BlockPermissions.Resize;
            if (!noIo)
                perm |= BlockPermissions.ConsistentRead;
            shared &= ~(BlockPermissions.Write | BlockPermissions.Resize);
        }
        if ((role & ChildRole.Data) != 0)
        {
            // The driver assumes the file's size; unchanged writes may still allocate; writes may extend the file.
            shared &= ~BlockPermissions.Resize;
            if ((perm & BlockPermissions.WriteUnchanged) != 0)
                perm |= BlockPermissions.Write;
            if ((perm & BlockPermissions.Write) != 0)
                perm |= BlockPermissions.Resize;
        }
        return (perm, shared);
    }
}
