using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Strata.Block.Drivers;
using Strata.Block.Drivers.Blkdebug;
using Strata.Images;
using Strata.Images.Format;

namespace Strata.Block;

/// <summary>
/// The node graph: every open node by name, created from blockdev options (QMP blockdev-add, --blockdev) and
/// removed by blockdev-del. Control-plane operations are serialised by the caller (one monitor at a time).
/// </summary>
public sealed class BlockGraph : IAsyncDisposable
{
    private readonly List<BlockNode> _nodes = []; // in order of creation
    private readonly Dictionary<BlockNode, int> _batchOf = new(ReferenceEqualityComparer.Instance);
    // Created by blockdev-add or --blockdev: only blockdev-del closes them. Children opened with them (named or not),
    // overlays and backup targets belong to their parents and go with their last user, as in QEMU.
    private readonly HashSet<BlockNode> _owned = new(ReferenceEqualityComparer.Instance);
    private readonly HashSet<BlockNode> _headerBacking = new(ReferenceEqualityComparer.Instance); // backing opened from the header
    private int _batch;
    private int _autoNameCounter;
    private long _namingCounter;

    /// <summary>
    /// Where the block layer reports what it cannot return as an error, such as a failed rollback step of a
    /// transaction that already failed for another reason (QEMU's error_report).
    /// </summary>
    public ILogger Log { get; init; } = NullLogger.Instance;

    /// <summary>Nodes in creation order (children before the parents that were opened with them).</summary>
    public IReadOnlyList<BlockNode> Nodes => _nodes;

    public BlockNode? Find(string nodeName)
    {
        foreach (var n in _nodes)
            if (n.NodeName == nodeName)
                return n;
        return null;
    }

    public BlockNode Get(string nodeName) =>
        Find(nodeName) ?? throw new BlockException($"Cannot find device='{nodeName}' nor node-name='{nodeName}'", BlockErrorKind.NotFound);

    /// <summary>QEMU's bdrv_lookup_bs: qemu-storage-daemon has no named block backends, so only the node name matches.</summary>
    public BlockNode Lookup(string? device, string? nodeName) =>
        (nodeName == null ? null : Find(nodeName)) ?? throw new BlockException($"Cannot find device='{device}' nor node-name='{nodeName}'");

    /// <summary>blockdev-add: opens a node (and children given inline, and backing files named in headers).</summary>
    /// <param name="keyval">The options come from a key=value command line (scalars are strings).</param>
    public async ValueTask<BlockNode> AddAsync(JsonObject options, bool keyval = false, CancellationToken ct = default)
    {
        var opened = new List<BlockNode>();
        _batch++;
        try
        {
            var node = await OpenAsync(new BlockOptions(options, "", keyval), root: true, opened, ct).ConfigureAwait(false);
            _owned.Add(node);
            return node;
        }
        catch
        {
            // Nothing of a failed blockdev-add stays open.
            for (int i = opened.Count - 1; i >= 0; i--)
                await RemoveNodeAsync(opened[i]).ConfigureAwait(false);
            throw;
        }
    }

    private static readonly Dictionary<string, string> Drivers = new()
    {
        ["file"] = "file", ["qcow2"] = "qcow2", ["raw"] = "raw", ["null-co"] = "null-co", ["blkdebug"] = "blkdebug",
    };

    private static readonly string[] KnownDrivers =
    [
        "blkdebug", "blklogwrites", "blkreplay", "blkverify", "bochs", "cloop", "compress", "copy-before-write", "copy-on-read",
        "dmg", "file", "snapshot-access", "ftp", "ftps", "gluster", "host_cdrom", "host_device", "http", "https", "iscsi", "luks",
        "nbd", "nfs", "null-aio", "null-co", "nvme", "parallels", "preallocate", "qcow", "qcow2", "qed", "quorum", "raw", "rbd",
        "replication", "ssh", "throttle", "vdi", "vhdx", "vmdk", "vpc", "vvfat",
    ];

    private static readonly Dictionary<string, bool> DiscardModes = new() { ["ignore"] = false, ["off"] = false, ["unmap"] = true, ["on"] = true };
    private static readonly Dictionary<string, DetectZeroes> DetectZeroesModes = new()
    {
        ["off"] = DetectZeroes.Off, ["on"] = DetectZeroes.On, ["unmap"] = DetectZeroes.Unmap,
    };

    private async ValueTask<BlockNode> OpenAsync(BlockOptions o, bool root, List<BlockNode> opened, CancellationToken ct,
        BlockNodeSettings? inherited = null)
    {
        string driver = o.RequireString("driver");
        if (!Array.Exists(KnownDrivers, d => d == driver))
            throw new BlockException($"Parameter 'driver' does not accept value '{driver}'");
        if (!Drivers.ContainsKey(driver))
            throw new BlockException($"Driver '{driver}' is not supported by strata-daemon");

        string? nodeName = o.GetString("node-name");
        if (nodeName == null && root)
            throw new BlockException("'node-name' must be specified for the root node");
        if (nodeName != null)
        {
            CheckNodeName(nodeName);
            if (Find(nodeName) != null)
                throw new BlockException($"Duplicate nodes with node-name='{nodeName}'");
        }

        var cache = o.GetObject("cache");
        bool? direct = cache?.GetBool("direct");
        bool? noFlush = cache?.GetBool("no-flush");
        cache?.EnsureAllRead();
        var settings = new BlockNodeSettings
        {
            ReadOnly = o.GetBool("read-only") ?? inherited?.ReadOnly ?? false,
            AutoReadOnly = o.GetBool("auto-read-only") ?? inherited?.AutoReadOnly ?? false,
            // Inherited by inline children and backing files, as QEMU's bdrv_inherited_options and bdrv_backing_options do.
            ForceShare = o.GetBool("force-share") ?? inherited?.ForceShare ?? false,
            Direct = direct ?? inherited?.Direct ?? false,
            NoFlush = noFlush ?? inherited?.NoFlush ?? false,
            Unmap = o.GetEnum("discard", DiscardModes) ?? inherited?.Unmap ?? false,
            DetectZeroes = o.GetEnum("detect-zeroes", DetectZeroesModes) ?? DetectZeroes.Off,
        };
        if (settings.ForceShare && !settings.ReadOnly)
            throw new BlockException("force-share=on can only be used with read-only images");

        bool autoNamed = nodeName == null;
        BlockNode node;
        switch (driver)
        {
            case "file":
                node = FileNode.Open(nodeName ?? NextAutoName(), settings, autoNamed, o);
                node.NamingOrder = ++_namingCounter;
                break;
            case "null-co":
                node = NullNode.Open(nodeName ?? NextAutoName(), settings, autoNamed, o);
                node.NamingOrder = ++_namingCounter;
                break;
            case "blkdebug":
            {
                // A protocol driver: QEMU names it before its open opens the image child.
                long order = ++_namingCounter;
                string name = nodeName ?? NextAutoName();
                node = await BlkdebugNode.OpenAsync(name, settings, autoNamed, o,
                    image => ChildAsync(o, "image", settings, opened, ct, image)).ConfigureAwait(false);
                node.NamingOrder = order;
                break;
            }
            case "raw":
            {
                var file = await ChildAsync(o, "file", settings, opened, ct).ConfigureAwait(false);
                long? offset = o.GetInt("offset");
                long? size = o.GetInt("size");
                if (offset is not (null or 0) || size != null)
                    throw new BlockException("raw: 'offset' and 'size' are not supported by strata-daemon");
                o.EnsureAllRead();
                node = new RawNode(nodeName ?? NextAutoName(), settings, autoNamed, file);
                node.NamingOrder = ++_namingCounter;
                // Without offset or size, raw passes requests through like a filter.
                node.AttachChild(file, "file", ChildRole.Filtered);
                break;
            }
            default: // qcow2
            {
                var file = await ChildAsync(o, "file", settings, opened, ct).ConfigureAwait(false);
                bool hasBacking = o.Has("backing");
                var backingOption = o.GetNode("backing");
                var qcow = await Qcow2Node.OpenAsync(nodeName ?? NextAutoName(), settings, autoNamed, file, o, ct).ConfigureAwait(false);
                node = qcow;
                node.NamingOrder = ++_namingCounter;
                try
                {
                    o.EnsureAllRead();
                    BlockNode? backing = null;
                    if (!hasBacking)
                    {
                        backing = await OpenBackingFromHeaderAsync(qcow, settings, opened, ct).ConfigureAwait(false);
                        if (backing != null)
                            _headerBacking.Add(qcow);
                    }
                    else if (backingOption != null)
                        backing = await BackingChildAsync(o, settings, opened, backingOption, ct).ConfigureAwait(false);
                    if (backing != null)
                    {
                        AttachBacking(qcow, backing);
                    }
                }
                catch
                {
                    foreach (var e in node.Children.ToArray())
                        e.Release();
                    await node.CloseAsync().ConfigureAwait(false);
                    throw;
                }
                break;
            }
        }
        if (driver is "file" or "null-co")
            o.EnsureAllRead();
        _nodes.Add(node);
        _batchOf[node] = _batch;
        opened.Add(node);
        return node;
    }

    /// <summary>Puts <paramref name="backing"/> behind a qcow2 node as its COW child (permissions follow the node's readers).</summary>
    public static void AttachBacking(Qcow2Node node, BlockNode backing)
    {
        node.AttachChild(backing, "backing", ChildRole.Cow);
        node.AttachBacking(backing);
    }

    /// <summary>A child given as a node name (reference) or as inline options (a new, auto-named node).</summary>
    private async ValueTask<BlockNode> ChildAsync(BlockOptions o, string key, BlockNodeSettings parent, List<BlockNode> opened,
        CancellationToken ct, JsonNode? value = null)
    {
        value ??= o.GetNode(key);
        if (value == null)
            throw new BlockException($"Parameter '{key}' is missing");
        if (value is JsonObject obj)
            return await OpenAsync(new BlockOptions(obj, key + ".", o.Keyval), root: false, opened, ct, parent).ConfigureAwait(false);
        if (value is JsonValue v && v.TryGetValue<string>(out var name))
            return Get(name);
        throw new BlockException($"Invalid parameter type for '{key}', expected: object or string");
    }

    /// <summary>A backing child given by node name or inline options; QEMU prefixes what goes wrong with where it happened.</summary>
    private async ValueTask<BlockNode> BackingChildAsync(BlockOptions o, BlockNodeSettings settings, List<BlockNode> opened, JsonNode value, CancellationToken ct)
    {
        try
        {
            return await ChildAsync(o, "backing", settings with { ReadOnly = true }, opened, ct, value).ConfigureAwait(false);
        }
        catch (BlockException e)
        {
            throw new BlockException($"Could not open backing file: {e.Message}", e.Kind, e) { Hint = e.Hint };
        }
    }

    /// <summary>Opens the chain the header names (read-only, auto-named nodes), as QEMU does when "backing" is absent.</summary>
    private async ValueTask<BlockNode?> OpenBackingFromHeaderAsync(Qcow2Node node, BlockNodeSettings settings, List<BlockNode> opened, CancellationToken ct)
    {
        string? name = node.Image.Header.BackingFileName;
        if (name == null)
            return null;
        // A blkdebug:CONFIG:IMAGE name has a protocol prefix: QEMU takes it as it is.
        bool blkdebug = BlkdebugFilename.Is(name);
        string path = blkdebug ? BlkdebugFilename.ImagePath(name) : BackingPath.Resolve(node.FileName, name);
        var fileOptions = blkdebug ? BlkdebugFilename.ToOptions(name) : new JsonObject { ["driver"] = "file", ["filename"] = path };
        string format = node.Image.Header.BackingFormat ?? await ProbeAsync(path, ct).ConfigureAwait(false);
        var options = new JsonObject { ["driver"] = format, ["file"] = fileOptions, ["read-only"] = true };
        try
        {
            return await OpenAsync(new BlockOptions(options), root: false, opened, ct, settings with { ReadOnly = true }).ConfigureAwait(false);
        }
        catch (BlockException e)
        {
            throw new BlockException($"Could not open backing file: {e.Message}", e.Kind, e) { Hint = e.Hint };
        }
    }

    private static async ValueTask<string> ProbeAsync(string path, CancellationToken ct)
    {
        try
        {
            await using var f = Images.Storage.FileStorage.Open(path, new Images.Storage.FileStorageOptions(ReadOnly: true));
            return await ImageOpener.ProbeAsync(f, ct).ConfigureAwait(false);
        }
        catch (IOException e)
        {
            throw new BlockException($"Could not open backing file: Could not open '{path}': {e.Message}");
        }
    }

    // ---- for live snapshots (Snapshots/) -------------------------------------------------------------

    /// <summary>
    /// Opens a node the way QEMU's bdrv_open does for a snapshot overlay: no node-name needed (auto-named then), the
    /// flags of <paramref name="inherited"/> (read-only, cache), not owned by the monitor. Nothing stays open on failure.
    /// </summary>
    internal async ValueTask<BlockNode> OpenUnownedAsync(JsonObject options, BlockNodeSettings inherited, CancellationToken ct)
    {
        var opened = new List<BlockNode>();
        _batch++;
        try
        {
            var node = await OpenAsync(new BlockOptions(options), root: false, opened, ct, inherited).ConfigureAwait(false);
            return node;
        }
        catch
        {
            for (int i = opened.Count - 1; i >= 0; i--)
                await RemoveNodeAsync(opened[i]).ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Closes a node nobody uses any more (and its auto-named children), as QEMU's last bdrv_unref does.</summary>
    internal ValueTask RemoveUnusedAsync(BlockNode node) => RemoveNodeAsync(node);

    /// <summary>The root of a blockdev-add (or --blockdev), QEMU's monitor-owned node: only blockdev-del closes it.</summary>
    public bool IsOwned(BlockNode node) => _owned.Contains(node);

    /// <summary>
    /// After a user (an export, a job) let go of <paramref name="node"/>: a node the monitor does not own and nobody
    /// uses any more is closed, with what only it used (QEMU frees it with its last reference).
    /// </summary>
    public async ValueTask ReleaseIfUnusedAsync(BlockNode node)
    {
        if (!IsOwned(node) && node.Parents.Count == 0)
            await RemoveNodeAsync(node).ConfigureAwait(false);
    }

    /// <summary>True when both nodes were opened by the same blockdev-add (or overlay open): QEMU names them together.</summary>
    public bool OpenedTogether(BlockNode a, BlockNode b) =>
        _batchOf.TryGetValue(a, out int x) && _batchOf.TryGetValue(b, out int y) && x == y;

    /// <summary>
    /// True when the node's backing child is the one its header names, opened with it (QEMU's "implicit" backing, whose
    /// file name the node then records as its own idea of the backing file).
    /// </summary>
    public bool HasBackingFromHeader(BlockNode node) => _headerBacking.Contains(node);

    /// <summary>Every backend (export, job) that uses a node of the graph.</summary>
    public IReadOnlyList<BlockBackend> Backends()
    {
        var list = new List<BlockBackend>();
        foreach (var n in _nodes)
            foreach (var e in n.Parents)
                if (e.Parent is BlockBackend b && !list.Contains(b))
                    list.Add(b);
        return list;
    }

    /// <summary>
    /// Drains every backend of the graph until the result is disposed: requests in flight finish first and new ones
    /// wait, so no client sees a graph change half done (transactions and the graph commands that are not one).
    /// </summary>
    public async ValueTask<IAsyncDisposable> DrainAllAsync(CancellationToken ct = default)
    {
        var drains = new List<IAsyncDisposable>();
        try
        {
            foreach (var backend in Backends())
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

    // ---- for backup jobs ------------------------------------------------------------------------------

    /// <summary>
    /// bdrv_cbw_append: opens a copy-before-write filter over <paramref name="source"/> (file child) writing to
    /// <paramref name="target"/> (target child), named <paramref name="filterName"/> or automatically, and moves every
    /// backend of the source (exports, jobs) onto it, as QEMU's bdrv_append. Call drained. Nothing changes on failure.
    /// </summary>
    internal CopyBeforeWriteNode InsertCopyBeforeWrite(BlockNode source, BlockNode target, string? filterName, Jobs.BlockCopy copy)
    {
        if (filterName != null)
        {
            // bdrv_insert_node's words around bdrv_open's.
            try
            {
                CheckNodeName(filterName);
            }
            catch (BlockException e)
            {
                throw new BlockException("Could not create node: " + e.Message);
            }
            if (Find(filterName) != null)
                throw new BlockException($"Could not create node: Duplicate nodes with node-name='{filterName}'");
        }
        var node = new CopyBeforeWriteNode(filterName ?? NextAutoName(), filterName == null, source, copy) { Appending = true };
        var moved = new List<BlockBackend>();
        var movedFilters = new List<CopyBeforeWriteNode>();
        var edges = new List<BlockEdge>();
        try
        {
            edges.Add(node.AttachChild(source, "file", ChildRole.Filtered));
            edges.Add(node.AttachChild(target, "target", ChildRole.Data));
            foreach (var e in source.Parents.ToArray())
            {
                if (e.Parent is BlockBackend backend)
                {
                    backend.ReplaceRoot(node);
                    moved.Add(backend);
                }
                else if (e.Parent is CopyBeforeWriteNode other && !ReferenceEquals(other, node) && e.Role == "file")
                {
                    // Another backup's filter: it now filters this one, so a guest write passes both (QEMU's chain).
                    other.ReplaceFile(node);
                    movedFilters.Add(other);
                }
            }
            node.Appending = false;
            node.RefreshPermissions();
            foreach (var f in movedFilters)
            {
                f.Appending = false;
                f.RefreshPermissions();
            }
        }
        catch
        {
            node.Appending = true;
            try
            {
                node.RefreshPermissions();
            }
            catch (BlockException)
            {
            }
            for (int i = moved.Count - 1; i >= 0; i--)
                moved[i].ReplaceRoot(source);
            foreach (var f in movedFilters)
                f.ReplaceFile(source);
            foreach (var e in edges)
                e.Release();
            throw;
        }
        node.NamingOrder = ++_namingCounter;
        _nodes.Add(node);
        _batchOf[node] = ++_batch;
        return node;
    }

    /// <summary>bdrv_cbw_drop: the filter's users go back to its source, and the filter leaves the graph. Call drained.</summary>
    internal void RemoveCopyBeforeWrite(CopyBeforeWriteNode node)
    {
        if (!_nodes.Contains(node))
            return;
        var source = node.FileChild!;
        node.Appending = true;
        try
        {
            node.RefreshPermissions();
        }
        catch (BlockException)
        {
            // Only sharing more: cannot conflict.
        }
        var filters = new List<CopyBeforeWriteNode>();
        foreach (var e in node.Parents.ToArray())
        {
            if (e.Parent is BlockBackend backend)
                backend.ReplaceRoot(source);
            else if (e.Parent is CopyBeforeWriteNode other && e.Role == "file")
            {
                other.ReplaceFile(source);
                filters.Add(other);
            }
        }
        foreach (var e in node.Children.ToArray())
            e.Release();
        foreach (var f in filters)
        {
            f.Appending = false;
            try
            {
                f.RefreshPermissions();
            }
            catch (BlockException)
            {
            }
        }
        _nodes.Remove(node);
        _batchOf.Remove(node);
    }

    private string NextAutoName() => $"#block{_autoNameCounter++:D3}";

    /// <summary>QEMU's rule: a well-formed id of at most 31 characters.</summary>
    private static void CheckNodeName(string name)
    {
        if (name.Length >= 32 || !QemuId.IsWellFormed(name))
            throw new BlockException("Invalid node-name: '" + name + "'");
    }

    /// <summary>blockdev-del: removes a node the monitor created, if nothing uses it.</summary>
    public async ValueTask DeleteAsync(string nodeName)
    {
        var node = Find(nodeName) ?? throw new BlockException($"Failed to find node with node-name='{nodeName}'", BlockErrorKind.Generic);
        node.CheckNotBlocked();
        foreach (var p in node.Parents)
            if (p.Parent is not BlockNode)
                throw new BlockException($"Node {nodeName} is in use");
        // QEMU's op blocker: a node that is another node's backing image cannot be deleted.
        node.CheckNotBacking();
        if (!IsOwned(node))
            throw new BlockException($"Node {nodeName} is not owned by the monitor");
        if (node.Parents.Count > 0)
            throw new BlockException($"Block device {nodeName} is in use");
        await RemoveNodeAsync(node).ConfigureAwait(false);
    }

    /// <summary>Closes a node and, recursively, the auto-named children nobody else uses.</summary>
    private async ValueTask RemoveNodeAsync(BlockNode node)
    {
        if (!_nodes.Contains(node))
            return;
        var children = node.Children.ToArray();
        foreach (var e in children)
            e.Release();
        try
        {
            await node.CloseAsync().ConfigureAwait(false);
        }
        catch (Exception e) when (e is ImageException or IOException)
        {
            // As QEMU's bdrv_close: a failed final flush (a disk error, an injected one) does not keep the node open.
        }
        finally
        {
            _nodes.Remove(node);
            _batchOf.Remove(node);
            _headerBacking.Remove(node);
            _owned.Remove(node);
        }
        foreach (var e in children)
            if (!IsOwned(e.Child) && e.Child.Parents.Count == 0)
                await RemoveNodeAsync(e.Child).ConfigureAwait(false);
    }

    /// <summary>Flushes and closes every node, parents before children.</summary>
    public async ValueTask DisposeAsync()
    {
        while (_nodes.Count > 0)
        {
            var top = _nodes.FindLast(n => !n.Parents.Any(p => p.Parent is BlockNode)) ?? _nodes[^1];
            foreach (var p in top.Parents.ToArray())
                p.Release();
            try
            {
                await RemoveNodeAsync(top).ConfigureAwait(false);
            }
            catch (ImageException)
            {
                // Closing the rest matters more than one node's error at shutdown.
            }
        }
    }
}
