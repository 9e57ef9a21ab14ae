namespace Strata.Block;

/// <summary>
/// block_resize below the monitor (qmp_block_resize after its argument checks): QEMU's op blocker, a temporary backend
/// taking the resize permission (refused while another user shares none), the driver's checks, then the resize.
/// </summary>
public static class NodeResize
{
    /// <param name="device">The device name the caller gave: QEMU's "in use" message names it ("(null)" when none).</param>
    public static async ValueTask RunAsync(BlockNode node, long size, string? device = null, CancellationToken ct = default)
    {
        // QEMU's op blockers: a backing file cannot be resized.
        if (node.BackingUser != null)
            throw new BlockException($"Device '{device ?? "(null)"}' is in use");

        var backend = new BlockBackend("an unnamed block device", node, BlockPermissions.Resize, BlockPermissions.All);
        try
        {
            if (node.IsReadOnly)
                throw new BlockException("Image is read-only");
            if (node.Driver == "null-co")
                throw new BlockException("Image format driver does not support resize");
            if (node.Driver == "qcow2" && size % 512 != 0)
                throw new BlockException("The new size must be a multiple of 512");

            // The temporary backend holds the resize permission (no export may be using the node); it carries no I/O.
            await node.ResizeAsync(size, allowShrink: true, ct: ct).ConfigureAwait(false);
        }
        catch (ArgumentException e)
        {
            throw new BlockException(e.Message);
        }
        finally
        {
            backend.Release();
        }
    }
}
