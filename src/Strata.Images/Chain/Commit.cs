using System.Buffers;
using System.Diagnostics;
using Strata.Images.Format;
using Strata.Images.Qcow2;
using Strata.Images.Storage;

namespace Strata.Images.Chain;

/// <summary>
/// Writing the changes of the upper layers of a chain into a lower one (qemu-img commit, QEMU's active commit):
/// every range some layer above the base holds is copied into the base as the chain reads it: data as data, and
/// ranges that read as zeroes because a layer says so as zero writes that may deallocate (so that zeroes reach the
/// base even where it holds data). Afterwards, unless asked not to, the top image is emptied.
/// </summary>
public static class Commit
{
    /// <summary>The largest piece copied at once.</summary>
    public const int ChunkSize = 1024 * 1024;

    /// <param name="top">The image whose chain is committed; <paramref name="baseImage"/> must be one of its backing layers.</param>
    /// <param name="progress">Bytes done so far and bytes to do (the ranges held above the base).</param>
    /// <param name="bytesPerSecond">Rate limit for the copy (0: none), like qemu-img commit -r.</param>
    public static async ValueTask CommitAsync(IImage top, IImage baseImage, Action<long, long>? progress = null,
        long bytesPerSecond = 0, CancellationToken ct = default)
    {
        bool found = false;
        for (IImage? l = top.Backing; l != null; l = l.Backing)
            found |= ReferenceEquals(l, baseImage);
        if (!found)
            throw new ImageException($"'{baseImage.FileName}' is not in the backing chain of '{top.FileName}'");

        long len = ChainWalk.GuestLength(top);
        if (ChainWalk.GuestLength(baseImage) < len)
            await baseImage.ResizeAsync(len, allowShrink: false, Preallocation.Off, ct).ConfigureAwait(false);
        // Work is tracked in granules of the base's cluster size (4 KiB to 64 KiB), as the commit job's dirty bitmap:
        // a granule any layer above the base touches is copied whole.
        long granule = baseImage is Qcow2Image q ? Math.Clamp(q.ClusterSize, 4096, 65536) : 65536;
        long targetCluster = baseImage is Qcow2Image q2 ? q2.ClusterSize : granule;
        var ranges = new List<(long Start, long End)>();
        long total = 0;
        for (long off = 0; off < len;)
        {
            var (alloc, n) = await ChainWalk.IsAllocatedAboveAsync(top, baseImage, off, len - off, ct).ConfigureAwait(false);
            if (n <= 0)
                break;
            if (alloc)
            {
                long s = off / granule * granule, e = Math.Min(len, (off + n + granule - 1) / granule * granule);
                if (ranges.Count > 0 && ranges[^1].End >= s)
                    ranges[^1] = (ranges[^1].Start, Math.Max(ranges[^1].End, e));
                else
                    ranges.Add((s, e));
            }
            off += n;
        }
        foreach (var (s, e) in ranges)
            total += e - s;
        progress?.Invoke(0, total);

        long done = 0;
        var clock = Stopwatch.StartNew();
        byte[] buf = ArrayPool<byte>.Shared.Rent(ChunkSize);
        try
        {
            foreach (var (start, end) in ranges)
            {
                for (long off = start; off < end;)
                {
                    long max = Math.Min(end - off, ChunkSize);
                    var st = await ChainWalk.StatusAboveAsync(top, null, off, max, ct).ConfigureAwait(false);
                    long piece = Math.Min(st.Length, max);
                    if (off + piece < end)
                        piece -= piece % granule;
                    bool zero = st.State != BlockState.Data;
                    if (piece < granule && off + piece < end)
                    {
                        piece = Math.Min(granule, end - off);
                        zero = false;
                    }
                    // Zeroes are written as such only on whole clusters of the base; otherwise they are copied.
                    if (zero && (off % targetCluster != 0 || (piece % targetCluster != 0 && off + piece != len)))
                        zero = false;
                    if (zero)
                        await baseImage.WriteZeroesAsync(off, piece, ZeroFlags.MayUnmap, ct).ConfigureAwait(false);
                    else
                    {
                        await top.ReadAsync(buf.AsMemory(0, (int)piece), off, ct).ConfigureAwait(false);
                        await baseImage.WriteAsync(buf.AsMemory(0, (int)piece), off, WriteFlags.None, ct).ConfigureAwait(false);
                    }
                    off += piece;
                    done += piece;
                    progress?.Invoke(done, total);
                    if (bytesPerSecond > 0)
                    {
                        var due = TimeSpan.FromSeconds((double)done / bytesPerSecond) - clock.Elapsed;
                        if (due > TimeSpan.Zero)
                            await Task.Delay(due, ct).ConfigureAwait(false);
                    }
                }
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buf);
        }
        await baseImage.FlushAsync(ct).ConfigureAwait(false);
    }

    /// <summary>Empties the top image after a commit (QEMU's bdrv_make_empty); false when its format cannot (raw).</summary>
    public static async ValueTask<bool> MakeEmptyAsync(IImage top, CancellationToken ct = default)
    {
        if (top is not Qcow2Image q)
            return false;
        await q.FlushAsync(ct).ConfigureAwait(false);
        await q.MakeEmptyAsync(ct).ConfigureAwait(false);
        return true;
    }
}
