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
    bool Writable = false, bool AllocationDepth = false, bool Writethrough = false);

/// <summary>Where the NBD server listens (nbd-server-start's addr).</summary>
public abstract record NbdAddress;
public sealed record UnixNbdAddress(string Path) : NbdAddress;
public sealed record InetNbdAddress(string Host, int Port) : NbdAddress;
