using Strata.Block;
using Strata.Nbd;

namespace Strata.Server;

/// <summary>An export of a node (QEMU's BlockExport): its id, the backend that holds the node, the NBD side.</summary>
public sealed class BlockExport
{
    internal BlockExport(string id, BlockBackend backend, NbdExport nbd)
    {
        Id = id;
        Backend = backend;
        Nbd = nbd;
    }

    public string Id { get; }
    public string Type => "nbd";
    public BlockBackend Backend { get; }
    public NbdExport Nbd { get; }
    public string NodeName => Backend.Root.NodeName;
    public bool ShuttingDown { get; internal set; }
}

/// <summary>block-export-add arguments that matter to Strata.</summary>
public sealed record ExportRequest(string Id, string NodeName, string? Name = null, string? Description = null,
    bool Writable = false, bool AllocationDepth = false, bool Writethrough = false)
{
    /// <summary>
    /// The members block-export-add (QMP) and --export (command line) share, read from their options in QEMU's order;
    /// the caller checks "type" first and reads what only it knows (bitmaps, iothread) after.
    /// </summary>
    public static ExportRequest Read(BlockOptions o) => new(
        Id: o.RequireString("id"),
        NodeName: o.RequireString("node-name"),
        Name: o.GetString("name"),
        Description: o.GetString("description"),
        Writable: o.GetBool("writable") ?? false,
        AllocationDepth: o.GetBool("allocation-depth") ?? false,
        Writethrough: o.GetBool("writethrough") ?? false);
}

/// <summary>Where the NBD server listens (nbd-server-start's addr).</summary>
public abstract record NbdAddress;
public sealed record UnixNbdAddress(string Path) : NbdAddress;
public sealed record InetNbdAddress(string Host, int Port) : NbdAddress;
