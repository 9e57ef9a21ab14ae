namespace Strata.Nbd.MetaContexts;

/// <summary>
/// A metadata context an export offers to NBD_CMD_BLOCK_STATUS (e.g. a future "qemu:dirty-bitmap:NAME").
/// The server negotiates it by <see cref="Name"/> (exact match; in LIST_META_CONTEXT also by a namespace
/// prefix ending in ':', as QEMU lists "qemu:" and "qemu:dirty-bitmap:"), gives it the context id
/// 2 + its index among the export's providers (QEMU's ids: base:allocation 0, qemu:allocation-depth 1,
/// dirty bitmaps 2 + i), and asks it for extents of each BLOCK_STATUS request.
/// </summary>
public interface INbdMetaContextProvider
{
    /// <summary>Full context name, "namespace:leaf" (at most 4096 bytes of UTF-8).</summary>
    string Name { get; }

    /// <summary>
    /// Appends extents that describe the guest range starting at <paramref name="offset"/>, in order and without
    /// gaps, until <paramref name="length"/> bytes are covered or <see cref="NbdExtentSink.TryAdd"/> returns false.
    /// The range lies inside the export. May be called concurrently for different requests. An exception is
    /// reported to the client as an error chunk ("can't get block status").
    /// </summary>
    ValueTask GetExtentsAsync(long offset, long length, NbdExtentSink sink, CancellationToken ct);
}
