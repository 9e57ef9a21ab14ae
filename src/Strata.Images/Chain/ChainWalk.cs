using Strata.Images.Format;

namespace Strata.Images.Chain;

/// <summary>Questions asked of a backing chain as a whole (QEMU's bdrv_is_allocated_above, bdrv_find_backing_image).</summary>
public static class ChainWalk
{
    /// <summary>The guest length QEMU's block layer sees: raw files are a whole number of sectors.</summary>
    public static long GuestLength(IImage img) => img.FormatName == "raw" ? (img.Size + 511) & ~511L : img.Size;

    /// <summary>
    /// Whether any layer from <paramref name="top"/> down to, but not including, <paramref name="baseExclusive"/>
    /// (null: the whole chain) holds the range starting at <paramref name="offset"/>, and for how many bytes that
    /// answer holds. Layers shorter than the range count as unallocated past their end.
    /// </summary>
    public static async ValueTask<(bool Allocated, long Length)> IsAllocatedAboveAsync(IImage top, IImage? baseExclusive, long offset, long length, CancellationToken ct = default)
    {
        long n = length;
        for (IImage? layer = top; layer != null && !ReferenceEquals(layer, baseExclusive); layer = layer.Backing)
        {
            long size = GuestLength(layer);
            long pnum;
            if (offset >= size)
                pnum = 0;
            else
            {
                var st = await LayerStatusAsync(layer, offset, Math.Min(length, size - offset), ct).ConfigureAwait(false);
                if (st.State != BlockState.Unallocated)
                    return (true, st.Length);
                pnum = st.Length;
            }
            // A short layer only limits the answer where it still covers the range.
            if (n > pnum && (ReferenceEquals(layer, top) || offset + pnum < size))
                n = pnum;
        }
        return (false, n);
    }

    /// <summary>This layer's status; raw images hold everything they cover.</summary>
    public static async ValueTask<BlockStatus> LayerStatusAsync(IImage layer, long offset, long length, CancellationToken ct = default)
    {
        if (layer.FormatName == "raw")
            return new BlockStatus(BlockState.Data, length);
        long size = layer.Size;
        if (offset >= size)
            return new BlockStatus(BlockState.Unallocated, length);
        var st = await layer.GetBlockStatusAsync(offset, Math.Min(length, size - offset), ct).ConfigureAwait(false);
        return st;
    }

    /// <summary>
    /// What the chain from <paramref name="top"/> down to <paramref name="bottomInclusive"/> (null: the whole chain)
    /// says about the range: the first layer that holds it decides (Data or Zero); Unallocated when none does.
    /// </summary>
    public static async ValueTask<BlockStatus> StatusAboveAsync(IImage top, IImage? bottomInclusive, long offset, long length, CancellationToken ct = default)
    {
        long n = length;
        for (IImage? layer = top; layer != null; layer = layer.Backing)
        {
            long size = GuestLength(layer);
            if (offset < size)
            {
                var st = await LayerStatusAsync(layer, offset, Math.Min(n, size - offset), ct).ConfigureAwait(false);
                if (st.State != BlockState.Unallocated)
                    return st with { Length = Math.Min(st.Length, n) };
                n = Math.Min(n, st.Length);
            }
            else if (ReferenceEquals(layer, top))
                break;
            if (ReferenceEquals(layer, bottomInclusive))
                break;
        }
        return new BlockStatus(BlockState.Unallocated, n);
    }

    /// <summary>
    /// The image below the layer whose backing file is <paramref name="name"/>, searching down from
    /// <paramref name="top"/> (QEMU's bdrv_find_backing_image): a relative <paramref name="name"/> is taken relative
    /// to the directory of each layer in turn, and both sides are compared as canonical paths.
    /// </summary>
    public static IImage? FindBackingImage(IImage top, string name)
    {
        bool protocol = BackingPath.HasProtocol(name);
        for (IImage? cur = top; cur?.Backing != null; cur = cur.Backing)
        {
            string? recorded = cur.BackingFileName;
            if (recorded == null)
                break;
            if (protocol || BackingPath.HasProtocol(recorded))
            {
                if (name == recorded || name == BackingPath.Resolve(cur.FileName, recorded))
                    return cur.Backing;
                continue;
            }
            string? wanted = RealPath(BackingPath.Resolve(cur.FileName, name));
            string? actual = RealPath(BackingPath.Resolve(cur.FileName, recorded));
            if (wanted != null && actual != null && wanted == actual)
                return cur.Backing;
        }
        return null;
    }



    /// <summary>realpath(3): null when the file does not exist.</summary>
    public static string? RealPath(string path)
    {
        try
        {
            var full = Path.GetFullPath(path);
            if (!File.Exists(full) && !Directory.Exists(full))
                return null;
            var target = File.ResolveLinkTarget(full, returnFinalTarget: true);
            return target?.FullName ?? full;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            return null;
        }
    }
}
