using Strata.Block;
using Strata.Block.Bitmaps;
using Strata.Images.Bitmaps;
using Strata.Nbd;

namespace Strata.Server;

/// <summary>An export of a node (QEMU's BlockExport): its id, the backend that holds the node, the NBD side.</summary>
public sealed class BlockExport
{
    internal BlockExport(string id, BlockBackend backend, NbdExport nbd, IReadOnlyList<DirtyBitmap> bitmaps)
    {
        Id = id;
        Backend = backend;
        Nbd = nbd;
        Bitmaps = bitmaps;
    }

    public string Id { get; }
    public string Type => "nbd";
    public BlockBackend Backend { get; }
    public NbdExport Nbd { get; }
    public string NodeName => Backend.Root.NodeName;
    public bool ShuttingDown { get; internal set; }

    /// <summary>The dirty bitmaps offered as "qemu:dirty-bitmap:NAME", held busy while the export exists.</summary>
    public IReadOnlyList<DirtyBitmap> Bitmaps { get; }
}

/// <summary>block-export-add arguments that matter to Strata.</summary>
public sealed record ExportRequest(string Id, string NodeName, string? Name = null, string? Description = null,
    bool Writable = false, bool AllocationDepth = false, bool Writethrough = false)
{
    /// <summary>"bitmaps": names of bitmaps in the node or its backing chain, or {node, name} of any node.</summary>
    public IReadOnlyList<BitmapRef> Bitmaps { get; init; } = [];

    /// <summary>
    /// The members block-export-add (QMP) and --export (command line) share, read from their options in QEMU's order;
    /// the caller checks "type" first and reads what only it knows (iothread) after.
    /// </summary>
    public static ExportRequest Read(BlockOptions o) => new(
        Id: o.RequireString("id"),
        NodeName: o.RequireString("node-name"),
        Name: o.GetString("name"),
        Description: o.GetString("description"),
        Writable: o.GetBool("writable") ?? false,
        AllocationDepth: o.GetBool("allocation-depth") ?? false,
        Writethrough: o.GetBool("writethrough") ?? false)
    {
        Bitmaps = ReadBitmaps(o.GetNode("bitmaps")),
    };

    /// <summary>
    /// BlockDirtyBitmapOrStr list, as JSON (QMP) or as the command line's keyval ("bitmaps.0=NAME",
    /// "bitmaps.1.node=N,bitmaps.1.name=B"), where a list is an object keyed by index.
    /// </summary>
    public static IReadOnlyList<BitmapRef> ReadBitmaps(System.Text.Json.Nodes.JsonNode? node)
    {
        IEnumerable<System.Text.Json.Nodes.JsonNode?> items = node switch
        {
            null => [],
            System.Text.Json.Nodes.JsonArray a => a,
            System.Text.Json.Nodes.JsonObject o => o.OrderBy(p => int.TryParse(p.Key, out var i) ? i : int.MaxValue).Select(p => p.Value),
            _ => throw new BlockException("Invalid parameter type for 'bitmaps', expected: array"),
        };
        var list = new List<BitmapRef>();
        foreach (var item in items)
        {
            list.Add(item switch
            {
                System.Text.Json.Nodes.JsonValue v when v.TryGetValue<string>(out var name) => new BitmapRef(null, name),
                System.Text.Json.Nodes.JsonObject o when o["node"]?.GetValue<string>() is { } n && o["name"]?.GetValue<string>() is { } b =>
                    new BitmapRef(n, b),
                _ => throw new BlockException("Invalid parameter type for 'bitmaps[]', expected: string or object"),
            });
        }
        return list;
    }
}

/// <summary>Where the NBD server listens (nbd-server-start's addr).</summary>
public abstract record NbdAddress;
public sealed record UnixNbdAddress(string Path) : NbdAddress;
/// <param name="Port">A number or a service name, as getaddrinfo takes it.</param>
/// <param name="Ipv4">QEMU's ipv4/ipv6 options: with one of them off, only the other family is used.</param>
public sealed record InetNbdAddress(string Host, string Port, bool? Ipv4 = null, bool? Ipv6 = null, bool Numeric = false) : NbdAddress;
