using Strata.Qmp;

namespace Strata.Client;

// blockdev-add, blockdev-del, blockdev-create, query-named-block-nodes, query-block, query-blockstats, block_resize.
public sealed partial class QmpClient
{
    /// <summary>Adds a block node (blockdev-add).</summary>
    public Task BlockdevAddAsync(BlockdevOptions options, CancellationToken cancellationToken = default) =>
        RunAsync("blockdev-add", options, Ctx.BlockdevOptions, cancellationToken);

    /// <summary>Removes a block node added by blockdev-add (blockdev-del).</summary>
    public Task BlockdevDelAsync(string nodeName, CancellationToken cancellationToken = default) =>
        RunAsync("blockdev-del", new BlockdevDelArgs { NodeName = nodeName }, Ctx.BlockdevDelArgs, cancellationToken);

    /// <summary>
    /// Starts a job that creates an image (blockdev-create). The job reports through
    /// JOB_STATUS_CHANGE events and must be dismissed (job-dismiss) when concluded.
    /// </summary>
    public Task BlockdevCreateAsync(string jobId, BlockdevCreateOptions options, CancellationToken cancellationToken = default) =>
        RunAsync("blockdev-create", new BlockdevCreateArgs { JobId = jobId, Options = options }, Ctx.BlockdevCreateArgs, cancellationToken);

    /// <summary>Every named block node (query-named-block-nodes).</summary>
    public async Task<IReadOnlyList<BlockDeviceInfo>> QueryNamedBlockNodesAsync(bool? flat = null, CancellationToken cancellationToken = default) =>
        await ExecuteAsync("query-named-block-nodes", new QueryNamedBlockNodesArgs { Flat = flat }, Ctx.QueryNamedBlockNodesArgs,
            Ctx.ListBlockDeviceInfo, cancellationToken).ConfigureAwait(false);

    /// <summary>The block backends (query-block).</summary>
    public async Task<IReadOnlyList<BlockInfo>> QueryBlockAsync(CancellationToken cancellationToken = default) =>
        await ExecuteAsync("query-block", Ctx.ListBlockInfo, cancellationToken).ConfigureAwait(false);

    /// <summary>I/O statistics (query-blockstats); <paramref name="queryNodes"/> for every named node.</summary>
    public async Task<IReadOnlyList<BlockStats>> QueryBlockstatsAsync(bool? queryNodes = null, CancellationToken cancellationToken = default) =>
        await ExecuteAsync("query-blockstats", new QueryBlockstatsArgs { QueryNodes = queryNodes }, Ctx.QueryBlockstatsArgs,
            Ctx.ListBlockStats, cancellationToken).ConfigureAwait(false);

    /// <summary>Resizes a node (block_resize).</summary>
    public Task BlockResizeAsync(string nodeName, long size, CancellationToken cancellationToken = default) =>
        BlockResizeAsync(new BlockResizeArgs { NodeName = nodeName, Size = size }, cancellationToken);

    public Task BlockResizeAsync(BlockResizeArgs args, CancellationToken cancellationToken = default) =>
        RunAsync("block_resize", args, Ctx.BlockResizeArgs, cancellationToken);
}
