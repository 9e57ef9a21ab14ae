using System.Runtime.CompilerServices;
using Strata.Images.Format;
using Strata.Images.Qcow2;

namespace Strata.Nbd.MetaContexts;

/// <param name="Length">Bytes the status holds for (at least 1 inside the disk).</param>
/// <param name="Data">Some layer holds data here (QEMU's BDRV_BLOCK_DATA); false for zero clusters and holes.</param>
/// <param name="Zero">The range reads as zeroes (QEMU's BDRV_BLOCK_ZERO).</param>
/// <param name="Depth">1-based layer of the chain that allocates the range (data or zero); 0 when no layer does.</param>
internal readonly record struct ChainExtent(long Length, bool Data, bool Zero, int Depth);

/// <summary>
/// Block status of a whole backing chain, computed as QEMU 7.2's bdrv_block_status_above(): walk down while a
/// layer leaves the range unallocated, clamping the length to each layer's answer. With <c>wantZero</c>, a data
/// range of a qcow2 layer is refined by the host file's holes (QEMU's BDRV_BLOCK_RECURSE) when that layer looks
/// metadata-preallocated (<see cref="Qcow2Image.IsMetadataPreallocatedAsync"/>).
/// Belongs in the block layer; lives here until Strata.Block offers it.
/// </summary>
internal sealed class ChainStatus
{
    private readonly bool? _forceRecurse;

    /// <param name="probeStorageHoles">null: QEMU's heuristic; true/false: always/never refine data by host holes.</param>
    public ChainStatus(bool? probeStorageHoles) => _forceRecurse = probeStorageHoles;

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<ChainExtent> GetAsync(IImage top, long offset, long length, bool wantZero, CancellationToken ct)
    {
        IImage image = top;
        int depth = 0;
        while (true)
        {
            depth++;
            if (depth > 1)
            {
                long size = image.Size;
                if (offset >= size)
                    return new ChainExtent(length, false, true, depth); // zeroes past a short backing act as allocated there
                length = Math.Min(length, size - offset);
            }
            BlockStatus s = await image.GetBlockStatusAsync(offset, length, ct).ConfigureAwait(false);
            long n = Math.Clamp(s.Length, 1, length);
            switch (s.State)
            {
                case BlockState.Data:
                    if (wantZero && s.HostOffset is long host && !s.Compressed && await ShouldRecurseAsync(image, ct).ConfigureAwait(false))
                    {
                        var storage = image.Storage;
                        var e = await storage.GetExtentAsync(host, n, ct).ConfigureAwait(false);
                        if (!e.IsData)
                        {
                            // A hole running to the end of the host file reads as zero for the whole range (BDRV_BLOCK_EOF).
                            if (host + e.Length < storage.Length)
                                n = Math.Clamp(e.Length, 1, n);
                            return new ChainExtent(n, true, true, depth);
                        }
                        n = Math.Clamp(e.Length, 1, n);
                    }
                    return new ChainExtent(n, true, false, depth);
                case BlockState.Zero:
                    return new ChainExtent(n, false, true, depth);
                default:
                    var backing = image.Backing;
                    if (backing == null)
                        return new ChainExtent(n, false, true, 0);
                    length = n;
                    image = backing;
                    break;
            }
        }
    }

    private ValueTask<bool> ShouldRecurseAsync(IImage image, CancellationToken ct)
    {
        if (_forceRecurse is bool forced)
            return ValueTask.FromResult(forced);
        if (image.FormatImage is not Qcow2Image q)
            return ValueTask.FromResult(false); // raw answers from the file already
        return q.IsMetadataPreallocatedAsync(ct);
    }
}
