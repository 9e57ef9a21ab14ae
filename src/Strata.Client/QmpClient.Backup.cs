using Strata.Qmp;

namespace Strata.Client;

// drive-backup, blockdev-backup, block-dirty-bitmap-*.
public sealed partial class QmpClient
{
    /// <summary>Starts a backup job to a file (drive-backup).</summary>
    public Task DriveBackupAsync(DriveBackupArgs args, CancellationToken cancellationToken = default) =>
        RunAsync("drive-backup", args, Ctx.DriveBackupArgs, cancellationToken);

    /// <summary>Starts a backup job to a node (blockdev-backup).</summary>
    public Task BlockdevBackupAsync(BlockdevBackupArgs args, CancellationToken cancellationToken = default) =>
        RunAsync("blockdev-backup", args, Ctx.BlockdevBackupArgs, cancellationToken);

    public Task BlockDirtyBitmapAddAsync(BlockDirtyBitmapAddArgs args, CancellationToken cancellationToken = default) =>
        RunAsync("block-dirty-bitmap-add", args, Ctx.BlockDirtyBitmapAddArgs, cancellationToken);

    public Task BlockDirtyBitmapRemoveAsync(string node, string name, CancellationToken cancellationToken = default) =>
        BitmapAsync("block-dirty-bitmap-remove", node, name, cancellationToken);

    public Task BlockDirtyBitmapClearAsync(string node, string name, CancellationToken cancellationToken = default) =>
        BitmapAsync("block-dirty-bitmap-clear", node, name, cancellationToken);

    public Task BlockDirtyBitmapEnableAsync(string node, string name, CancellationToken cancellationToken = default) =>
        BitmapAsync("block-dirty-bitmap-enable", node, name, cancellationToken);

    public Task BlockDirtyBitmapDisableAsync(string node, string name, CancellationToken cancellationToken = default) =>
        BitmapAsync("block-dirty-bitmap-disable", node, name, cancellationToken);

    public Task BlockDirtyBitmapMergeAsync(BlockDirtyBitmapMergeArgs args, CancellationToken cancellationToken = default) =>
        RunAsync("block-dirty-bitmap-merge", args, Ctx.BlockDirtyBitmapMergeArgs, cancellationToken);

    private Task BitmapAsync(string command, string node, string name, CancellationToken cancellationToken) =>
        RunAsync(command, new BlockDirtyBitmapArgs { Node = node, Name = name }, Ctx.BlockDirtyBitmapArgs, cancellationToken);
}
