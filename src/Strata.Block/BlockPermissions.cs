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
