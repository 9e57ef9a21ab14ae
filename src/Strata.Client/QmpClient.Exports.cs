using Strata.Qmp;

namespace Strata.Client;

// block-export-add/del, query-block-exports, nbd-server-start/stop/add/remove.
public sealed partial class QmpClient
{
    public Task BlockExportAddAsync(BlockExportOptions options, CancellationToken cancellationToken = default) =>
        RunAsync("block-export-add", options, Ctx.BlockExportOptions, cancellationToken);

    public Task BlockExportDelAsync(string id, BlockExportRemoveMode? mode = null, CancellationToken cancellationToken = default) =>
        RunAsync("block-export-del", new BlockExportDelArgs { Id = id, Mode = mode }, Ctx.BlockExportDelArgs, cancellationToken);

    public async Task<IReadOnlyList<BlockExportInfo>> QueryBlockExportsAsync(CancellationToken cancellationToken = default) =>
        await ExecuteAsync("query-block-exports", Ctx.ListBlockExportInfo, cancellationToken).ConfigureAwait(false);

    public Task NbdServerStartAsync(NbdServerStartArgs args, CancellationToken cancellationToken = default) =>
        RunAsync("nbd-server-start", args, Ctx.NbdServerStartArgs, cancellationToken);

    /// <summary>Starts the NBD server on a unix socket.</summary>
    public Task NbdServerStartUnixAsync(string path, CancellationToken cancellationToken = default) =>
        NbdServerStartAsync(new NbdServerStartArgs { Addr = SocketAddressLegacy.Unix(path) }, cancellationToken);

    public Task NbdServerStopAsync(CancellationToken cancellationToken = default) =>
        ExecuteAsync("nbd-server-stop", Ctx.QmpEmpty, cancellationToken);

    public Task NbdServerAddAsync(NbdServerAddArgs args, CancellationToken cancellationToken = default) =>
        RunAsync("nbd-server-add", args, Ctx.NbdServerAddArgs, cancellationToken);

    public Task NbdServerRemoveAsync(string name, BlockExportRemoveMode? mode = null, CancellationToken cancellationToken = default) =>
        RunAsync("nbd-server-remove", new NbdServerRemoveArgs { Name = name, Mode = mode }, Ctx.NbdServerRemoveArgs, cancellationToken);
}
