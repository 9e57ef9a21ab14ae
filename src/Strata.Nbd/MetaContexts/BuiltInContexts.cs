using System.Runtime.CompilerServices;
using Strata.Images.Format;
using Strata.Nbd.Protocol;

namespace Strata.Nbd.MetaContexts;

/// <summary>"base:allocation": HOLE where no layer holds data, ZERO where the range reads as zeroes (QEMU 7.2 rules).</summary>
internal sealed class BaseAllocationContext(IImage image, ChainStatus chain) : INbdMetaContextProvider
{
    public const string ContextName = "base:allocation";

    public string Name => ContextName;

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask GetExtentsAsync(long offset, long length, NbdExtentSink sink, CancellationToken ct)
    {
        while (length > 0)
        {
            var e = await chain.GetAsync(image, offset, length, wantZero: true, ct).ConfigureAwait(false);
            uint flags = (e.Data ? 0 : (uint)NbdAllocationFlags.Hole) | (e.Zero ? (uint)NbdAllocationFlags.Zero : 0);
            if (!sink.TryAdd(e.Length, flags))
                return;
            offset += e.Length;
            length -= e.Length;
        }
    }
}

/// <summary>"qemu:allocation-depth": 0 where no layer allocates the range, else the 1-based depth of the layer that does.</summary>
internal sealed class AllocationDepthContext(IImage image, ChainStatus chain) : INbdMetaContextProvider
{
    public const string ContextName = "qemu:allocation-depth";

    public string Name => ContextName;

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask GetExtentsAsync(long offset, long length, NbdExtentSink sink, CancellationToken ct)
    {
        while (length > 0)
        {
            var e = await chain.GetAsync(image, offset, length, wantZero: false, ct).ConfigureAwait(false);
            if (!sink.TryAdd(e.Length, (uint)e.Depth))
                return;
            offset += e.Length;
            length -= e.Length;
        }
    }
}
