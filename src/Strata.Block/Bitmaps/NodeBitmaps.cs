using System.Security.Cryptography;
using Strata.Block.Drivers;
using Strata.Images.Bitmaps;

namespace Strata.Block.Bitmaps;

/// <summary>A bitmap named by the caller: by name on the node at hand, or on another node (BlockDirtyBitmapOrStr).</summary>
public sealed record BitmapRef(string? Node, string Name);

/// <summary>
/// The live dirty bitmaps of the graph's nodes, with QEMU 7.2's semantics and messages (block/monitor/bitmap-qmp-cmds.c,
/// block/dirty-bitmap.c): lookup, add, remove, clear, enable, disable, merge and the debug hash. The QMP commands and
/// the transaction actions both go through here.
/// </summary>
public static class NodeBitmaps
{
    /// <summary>QEMU's default granularity where the driver reports no cluster size (file, raw, null-co).</summary>
    public const uint DefaultGranularity = 65536;

    /// <summary>bdrv_getlength: whole sectors (a file node of 196616 bytes covers 197120).</summary>
    private static long Length(BlockNode bs) => BlockNode.WholeSectors(bs.Size);

    /// <summary>block_dirty_bitmap_lookup: "Node 'X' not found", then "Dirty bitmap 'Y' not found".</summary>
    public static (BlockNode Node, DirtyBitmap Bitmap) Lookup(BlockGraph graph, string node, string name)
    {
        var bs = graph.Find(node) ?? throw new BlockException($"Node '{node}' not found");
        var bm = bs.DirtyBitmaps.Find(name) ?? throw new BitmapException($"Dirty bitmap '{name}' not found");
        return (bs, bm);
    }

    /// <summary>qmp_block_dirty_bitmap_add: name, node, granularity, persistence, then creation, checked in QEMU's order.</summary>
    public static async ValueTask<DirtyBitmap> AddAsync(BlockGraph graph, string node, string name, uint? granularity = null,
        bool persistent = false, bool disabled = false, CancellationToken ct = default)
    {
        if (string.IsNullOrEmpty(name))
            throw new BitmapException("Bitmap name cannot be empty");
        var bs = graph.Lookup(node, node);
        if (bs is Qcow2Node q)
        {
            // The image holds the node's set: its checks are qcow2_co_can_store_new_dirty_bitmap's and its default
            // granularity the cluster size's.
            var added = await q.Image.AddDirtyBitmapAsync(name, granularity, persistent, disabled, ct).ConfigureAwait(false);
            return added;
        }

        uint g = granularity ?? DefaultGranularity;
        if (g < 512 || !System.Numerics.BitOperations.IsPow2(g))
            throw new BitmapException("Granularity must be power of 2 and at least 512");
        if (persistent)
            throw new BitmapException($"Can't store persistent bitmaps to {bs.NodeName}: Operation not supported");
        if (bs.DirtyBitmaps.Find(name) != null)
            throw new BitmapException($"Bitmap already exists: {name}");
        DirtyBitmap bm;
        try
        {
            bm = new DirtyBitmap(Length(bs), g, name) { Enabled = !disabled };
        }
        catch (ArgumentOutOfRangeException)
        {
            throw new BitmapException($"Bitmap '{name}' of node '{bs.NodeName}' would be too large; use a larger granularity");
        }
        bs.DirtyBitmaps.Add(bm);
        return bm;
    }

    /// <summary>
    /// block_dirty_bitmap_remove: refused while busy or read-only; a persistent bitmap leaves the image now. With
    /// <paramref name="release"/> false the bitmap stays in the node's set (a transaction drops it at commit).
    /// </summary>
    public static async ValueTask<(BlockNode Node, DirtyBitmap Bitmap)> RemoveAsync(BlockGraph graph, string node, string name, bool release,
        CancellationToken ct = default)
    {
        var (bs, bm) = Lookup(graph, node, name);
        DirtyBitmapSet.Check(bm, BitmapCheck.Busy | BitmapCheck.ReadOnly);
        if (bm.Persistent && bs is Qcow2Node q)
            await q.Image.RemoveStoredBitmapAsync(name, ct).ConfigureAwait(false);
        if (release)
            bs.DirtyBitmaps.Remove(bm);
        return (bs, bm);
    }

    /// <summary>qmp_block_dirty_bitmap_clear; returns the bits as they were (a transaction restores them on abort).</summary>
    public static (DirtyBitmap Bitmap, DirtyBitmap Backup) Clear(BlockGraph graph, string node, string name)
    {
        var (_, bm) = Lookup(graph, node, name);
        DirtyBitmapSet.Check(bm, BitmapCheck.Default);
        var backup = bm.Copy();
        bm.Clear();
        return (bm, backup);
    }

    /// <summary>block-dirty-bitmap-enable / -disable; returns the bitmap, its set and whether it was enabled before.</summary>
    public static (DirtyBitmap Bitmap, DirtyBitmapSet Set, bool WasEnabled) SetEnabled(BlockGraph graph, string node, string name, bool enabled)
    {
        var (bs, bm) = Lookup(graph, node, name);
        DirtyBitmapSet.Check(bm, BitmapCheck.AllowReadOnly);
        bool was = bm.Enabled;
        bs.DirtyBitmaps.SetEnabled(bm, enabled);
        return (bm, bs.DirtyBitmaps, was);
    }

    /// <summary>
    /// block_dirty_bitmap_merge: the sources are first merged into an anonymous bitmap of the target's granularity
    /// (each checked as it comes), then into the target, which is unchanged on any failure. Returns the target and
    /// its bits from before (a transaction restores them on abort).
    /// </summary>
    public static (DirtyBitmap Bitmap, DirtyBitmap Backup) Merge(BlockGraph graph, string node, string target, IReadOnlyList<BitmapRef> sources)
    {
        var (bs, dst) = Lookup(graph, node, target);
        DirtyBitmapSet.Check(dst, BitmapCheck.Default);
        var anon = new DirtyBitmap(Length(bs), dst.Granularity);
        foreach (var src in sources)
        {
            var bm = src.Node is null
                ? bs.DirtyBitmaps.Find(src.Name) ?? throw new BitmapException($"Dirty bitmap '{src.Name}' not found")
                : Lookup(graph, src.Node, src.Name).Bitmap;
            MergeChecked(anon, bm);
        }
        var backup = dst.Copy();
        MergeChecked(dst, anon);
        return (dst, backup);
    }

    /// <summary>bdrv_merge_dirty_bitmap: target may be changed, source read; both cover the same length.</summary>
    private static void MergeChecked(DirtyBitmap target, DirtyBitmap source)
    {
        DirtyBitmapSet.Check(target, BitmapCheck.Default);
        DirtyBitmapSet.Check(source, BitmapCheck.AllowReadOnly);
        if (target.Size != source.Size)
            throw new BitmapException($"Bitmaps are of different sizes (destination size is {target.Size}, source size is {source.Size}) and can't be merged");
        target.Merge(source);
    }

    /// <summary>Puts back the bits saved by <see cref="Clear"/> or <see cref="Merge"/> (bdrv_restore_dirty_bitmap).</summary>
    public static void Restore(DirtyBitmap bitmap, DirtyBitmap backup)
    {
        bitmap.Clear();
        bitmap.Merge(backup);
    }

    /// <summary>
    /// x-debug-block-dirty-bitmap-sha256: SHA-256 of the bits as QEMU's hbitmap keeps its last level, 64-bit
    /// little-endian words, bit i = granule i, at least one word.
    /// </summary>
    public static string Sha256(BlockGraph graph, string node, string name)
    {
        var (_, bm) = Lookup(graph, node, name);
        return Sha256(bm);
    }

    public static string Sha256(DirtyBitmap bm)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var chunk = new byte[65536];
        if (bm.Size == 0)
        {
            hash.AppendData(chunk, 0, 8);
        }
        else
        {
            // Whole chunks of words at a time: a bitmap of 2^32 bits is 512 MiB, never held twice.
            long step = bm.SerializationCoverage(chunk.Length);
            for (long off = 0; off < bm.Size; off += step)
            {
                long len = Math.Min(step, bm.Size - off);
                int n = (int)bm.SerializationSize(off, len);
                bm.SerializePart(chunk, off, len);
                hash.AppendData(chunk, 0, n);
            }
        }
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }
}
