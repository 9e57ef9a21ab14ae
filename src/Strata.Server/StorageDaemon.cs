using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Strata.Block;
using Strata.Block.Jobs;
using Strata.Nbd;

namespace Strata.Server;

/// <summary>An event for monitors: name and data members, in QMP's terms but with no wire format.</summary>
public sealed record DaemonEvent(string Name, IReadOnlyDictionary<string, object?> Data);

/// <summary>
/// The storage daemon's state, independent of any wire: the block graph, the NBD server and the exports, with
/// qemu-storage-daemon's semantics and messages. The command line and QMP both drive it; control-plane calls are
/// serialised by the caller.
/// </summary>
public sealed class StorageDaemon : IAsyncDisposable
{
    private readonly List<BlockExport> _exports = []; // in order of creation
    private readonly ILoggerFactory _loggers;
    private readonly ILogger _log;
    private NbdServer? _nbd;

    public StorageDaemon(ILoggerFactory? loggers = null)
    {
        _loggers = loggers ?? NullLoggerFactory.Instance;
        _log = _loggers.CreateLogger("Strata.Server");
        Graph = new BlockGraph { Log = _loggers.CreateLogger("Strata.Block") };
        Jobs = new JobRegistry(MainLoop);
        Jobs.Events.Raised += OnJobEvent;
    }

    private Task _clientsAllowed = Task.CompletedTask;

    /// <summary>
    /// Until the handle is disposed, an NBD server started meanwhile binds its socket but serves no client: a daemon
    /// applying its command line thus shows no client a half-built set of exports (QEMU applies it before its main
    /// loop runs).
    /// </summary>
    public IDisposable DeferClients()
    {
        var allowed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _clientsAllowed = allowed.Task;
        return new ClientsAllowed(allowed);
    }

    private sealed class ClientsAllowed(TaskCompletionSource allowed) : IDisposable
    {
        public void Dispose() => allowed.TrySetResult();
    }

    public BlockGraph Graph { get; }
    public NbdServer? Nbd => _nbd;
    public IReadOnlyList<BlockExport> Exports => _exports;

    /// <summary>Commands and job completions take turns on it (QEMU's main loop).</summary>
    public MainLoop MainLoop { get; } = new();

    /// <summary>The daemon's jobs (blockdev-create, later block jobs).</summary>
    public JobRegistry Jobs { get; }

    private void OnJobEvent(JobEvent e)
    {
        switch (e)
        {
            case JobStatusChanged c:
                Raise("JOB_STATUS_CHANGE", ("id", c.Job.Id), ("status", JobTransitions.Name(c.Status)));
                break;
            // The BLOCK_JOB_* events of blockjob.c: "device" is the job's id.
            case JobFinished { Job: BlockJob b } f when f.Cancelled:
                Raise("BLOCK_JOB_CANCELLED", ("type", b.Type), ("device", b.Id), ("len", b.TotalProgress), ("offset", b.CurrentProgress),
                    ("speed", b.Speed));
                break;
            case JobFinished { Job: BlockJob b }:
                if (b.Error is { } error)
                    Raise("BLOCK_JOB_COMPLETED", ("type", b.Type), ("device", b.Id), ("len", b.TotalProgress), ("offset", b.CurrentProgress),
                        ("speed", b.Speed), ("error", error));
                else
                    Raise("BLOCK_JOB_COMPLETED", ("type", b.Type), ("device", b.Id), ("len", b.TotalProgress), ("offset", b.CurrentProgress),
                        ("speed", b.Speed));
                break;
            case JobPendingFinalize { Job: BlockJob b }:
                Raise("BLOCK_JOB_PENDING", ("type", b.Type), ("id", b.Id));
                break;
            case JobReady { Job: BlockJob b }:
                Raise("BLOCK_JOB_READY", ("type", b.Type), ("device", b.Id), ("len", b.TotalProgress), ("offset", b.CurrentProgress),
                    ("speed", b.Speed));
                break;
            case BlockJobError x:
                Raise("BLOCK_JOB_ERROR", ("device", x.Job.Id), ("operation", x.IsRead ? "read" : "write"),
                    ("action", x.Action switch { BlockErrorAction.Ignore => "ignore", BlockErrorAction.Stop => "stop", _ => "report" }));
                break;
        }
    }

    /// <summary>Raised for QMP events (BLOCK_EXPORT_DELETED, ...).</summary>
    public event Action<DaemonEvent>? EventRaised;

    private void Raise(string name, params (string Key, object? Value)[] data)
    {
        var d = new Dictionary<string, object?>();
        foreach (var (k, v) in data)
            d[k] = v;
        EventRaised?.Invoke(new DaemonEvent(name, d));
    }

    /// <param name="maxConnections">QEMU's uint32 max-connections: 0 for no limit.</param>
    public async ValueTask StartNbdServerAsync(NbdAddress address, uint maxConnections = 0, CancellationToken ct = default)
    {
        if (_nbd != null)
            throw new BlockException("NBD server already running");
        // An inet address may resolve to several; as QEMU, the server listens on the first one it can bind.
        IReadOnlyList<EndPoint> candidates = address switch
        {
            InetNbdAddress i => [.. InetListenAddress.Resolve(i.Host, i.Port, i.Ipv4, i.Ipv6, i.Numeric)],
            UnixNbdAddress u => [new UnixDomainSocketEndPoint(u.Path)],
            _ => throw new ArgumentException($"unknown NBD address {address}", nameof(address)),
        };
        var options = new NbdServerOptions { MaxConnections = (int)Math.Min(maxConnections, int.MaxValue), AcceptAfter = _clientsAllowed };
        var server = new NbdServer(options, _loggers.CreateLogger("Strata.Nbd"));
        EndPoint? bound = null;
        SocketException? failure = null;
        foreach (var endPoint in candidates)
        {
            try
            {
                server.AddListener(endPoint);
                bound = endPoint;
                break;
            }
            catch (SocketException e)
            {
                failure = e;
            }
        }
        try
        {
            if (bound is null)
                throw failure ?? new SocketException((int)SocketError.AddressNotAvailable);
            await server.StartAsync(ct).ConfigureAwait(false);
        }
        catch (SocketException e)
        {
            await server.DisposeAsync().ConfigureAwait(false);
            throw new BlockException($"Failed to bind socket: {e.Message}");
        }
        _nbd = server;
        _log.LogInformation("NBD server listening on {Address}", bound);
    }

    public async ValueTask StopNbdServerAsync(CancellationToken ct = default)
    {
        var server = _nbd ?? throw new BlockException("NBD server not running");
        foreach (var e in _exports.ToArray())
            await RemoveExportCoreAsync(e, hard: true, ct).ConfigureAwait(false);
        _nbd = null;
        await server.StopAsync(ct).ConfigureAwait(false);
        await server.DisposeAsync().ConfigureAwait(false);
    }

    public BlockExport AddExport(ExportRequest request)
    {
        // blk_exp_add's order of checks, then nbd_export_create's.
        if (!QemuId.IsWellFormed(request.Id))
            throw new BlockException("Invalid block export id");
        if (_exports.Exists(e => e.Id == request.Id))
            throw new BlockException($"Block export id '{request.Id}' is already in use");
        var node = Graph.Find(request.NodeName)
            ?? throw new BlockException($"Cannot find device='' nor node-name='{request.NodeName}'", BlockErrorKind.NotFound);
        if (request.Writable && node.IsReadOnly)
            throw new BlockException("Cannot export read-only node as writable");
        var server = _nbd ?? throw new BlockException("NBD server not running");
        string name = request.Name ?? request.NodeName;
        if (server.FindExport(name) != null)
            throw new BlockException($"NBD server already has export named '{name}'");
        var bitmaps = ResolveBitmaps(node, request);
        var perm = BlockPermissions.ConsistentRead | (request.Writable ? BlockPermissions.Write : 0);
        // An export's backend is anonymous in QEMU; the NBD server does not let others resize the node under it.
        var backend = new BlockBackend("an unnamed block device", node, perm, BlockPermissions.All & ~BlockPermissions.Resize);
        try
        {
            var nbd = new NbdExport(name, backend, new NbdExportOptions
            {
                Description = request.Description,
                Writable = request.Writable,
                AllocationDepth = request.AllocationDepth,
                MetaContexts = [.. bitmaps.Select(b => new Strata.Nbd.MetaContexts.DirtyBitmapContext(b.Name, b.Bitmap))],
            });
            server.AddExport(nbd);
            var export = new BlockExport(request.Id, backend, nbd, [.. bitmaps.Select(b => b.Bitmap)]);
            // Busy only once everything else succeeded (a bitmap listed twice is checked twice, then marked once).
            foreach (var b in export.Bitmaps)
                b.Busy = true;
            _exports.Add(export);
            _log.LogInformation("Export '{Id}' of node '{Node}' as '{Name}' ({Mode})", request.Id, node.NodeName, name, request.Writable ? "writable" : "read-only");
            return export;
        }
        catch
        {
            backend.Release();
            throw;
        }
    }

    /// <summary>
    /// nbd_export_create's bitmap checks: a bare name is looked for in the node, then down its backing chain, and an
    /// enabled bitmap of a writable node cannot go out on a read-only export (its bits would change under the
    /// client); {node, name} names any node's. Each must be neither busy nor inconsistent.
    /// </summary>
    private List<(string Name, Strata.Images.Bitmaps.DirtyBitmap Bitmap)> ResolveBitmaps(BlockNode node, ExportRequest request)
    {
        var list = new List<(string, Strata.Images.Bitmaps.DirtyBitmap)>();
        try
        {
            ResolveBitmapsInto(node, request, list);
        }
        catch (Strata.Images.Bitmaps.BitmapException e)
        {
            // A block-layer error for the command line and QMP alike; qsd prints no hint here.
            throw new BlockException(e.Message);
        }
        return list;
    }

    private void ResolveBitmapsInto(BlockNode node, ExportRequest request, List<(string, Strata.Images.Bitmaps.DirtyBitmap)> list)
    {
        foreach (var r in request.Bitmaps)
        {
            Strata.Images.Bitmaps.DirtyBitmap? bm = null;
            if (r.Node is null)
            {
                BlockNode? owner = node;
                for (; owner != null; owner = owner.BackingChild)
                {
                    bm = owner.DirtyBitmaps.Find(r.Name);
                    if (bm != null)
                        break;
                }
                if (bm == null || owner == null)
                    throw new BlockException($"Bitmap '{r.Name}' is not found");
                if (!request.Writable && !owner.IsReadOnly && bm.Enabled)
                    throw new BlockException($"Enabled bitmap '{r.Name}' incompatible with readonly export");
            }
            else
            {
                bm = Strata.Block.Bitmaps.NodeBitmaps.Lookup(Graph, r.Node, r.Name).Bitmap;
            }
            Strata.Images.Bitmaps.DirtyBitmapSet.Check(bm, Strata.Images.Bitmaps.BitmapCheck.AllowReadOnly);
            list.Add((r.Name, bm));
        }
    }

    public async ValueTask DeleteExportAsync(string id, bool hard = false, CancellationToken ct = default)
    {
        var export = _exports.Find(e => e.Id == id) ?? throw new BlockException($"Export '{id}' is not found");
        if (!hard && _nbd != null && await _nbd.GetClientCountAsync(export.Nbd.Name, ct).ConfigureAwait(false) > 0)
            throw new BlockException($"export '{id}' still in use");
        await RemoveExportCoreAsync(export, hard, ct).ConfigureAwait(false);
    }

    private async ValueTask RemoveExportCoreAsync(BlockExport export, bool hard, CancellationToken ct)
    {
        export.ShuttingDown = true;
        if (_nbd != null)
            await _nbd.RemoveExportAsync(export.Nbd.Name, hard ? NbdExportRemoveMode.Hard : NbdExportRemoveMode.Safe, ct).ConfigureAwait(false);
        await export.Backend.FlushAsync(ct).ConfigureAwait(false);
        var root = export.Backend.Root;
        export.Backend.Release();
        await Graph.ReleaseIfUnusedAsync(root).ConfigureAwait(false); // an overlay only the export held
        foreach (var b in export.Bitmaps)
            b.Busy = false;
        _exports.Remove(export);
        Raise("BLOCK_EXPORT_DELETED", ("id", export.Id));
    }

    private Task? _shutdown;

    /// <summary>
    /// Shutdown in qemu-storage-daemon's order: exports drained and removed (BLOCK_EXPORT_DELETED each), jobs
    /// cancelled, images flushed and closed. Call it while monitors are still connected, so that they see those
    /// events as qsd's monitors do; later calls wait for the first.
    /// </summary>
    public Task ShutdownAsync()
    {
        lock (_exports)
            return _shutdown ??= ShutdownCoreAsync();
    }

    /// <summary>The first step of the shutdown (blk_exp_close_all): every export removed, the NBD server stopped.</summary>
    public async ValueTask CloseExportsAsync(CancellationToken ct = default)
    {
        if (_nbd == null)
            return;
        try
        {
            await StopNbdServerAsync(ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is BlockException or IOException)
        {
            _log.LogWarning("Stopping the NBD server: {Message}", e.Message);
        }
    }

    private async Task ShutdownCoreAsync()
    {
        await CloseExportsAsync().ConfigureAwait(false);
        await Jobs.CancelAllAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        await Graph.DisposeAsync().ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync() => await ShutdownAsync().ConfigureAwait(false);
}
