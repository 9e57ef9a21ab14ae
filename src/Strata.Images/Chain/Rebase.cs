using System.Buffers;
using Strata.Images.Format;
using Strata.Images.Qcow2;

namespace Strata.Images.Chain;

/// <summary>
/// Moving an image onto another backing file (qemu-img rebase). In safe mode every range the overlay does not hold
/// is compared between the old and the new backing file and, where they differ, the old content is copied into the
/// overlay first, so that what the guest sees never changes, even if the operation stops half way.
/// </summary>
public static class Rebase
{
    /// <summary>qemu-img's IO_BUF_SIZE: the unit of work (and of progress).</summary>
    public const int ChunkSize = 2 * 1024 * 1024;

    /// <summary>
    /// The copy step of a safe rebase. <paramref name="oldBacking"/> is what the overlay reads through today (null: zeroes),
    /// <paramref name="newBacking"/> what it will read through (null: zeroes). When the new backing image is itself a
    /// layer of the old chain, ranges no layer above it holds are known to be equal and are skipped.
    /// <paramref name="progress"/> gets the percentage each chunk adds (QEMU counts only chunks that were compared).
    /// </summary>
    public static async ValueTask CopyDifferencesAsync(IImage overlay, IImage? oldBacking, IImage? newBacking,
        Action<float>? progress = null, CancellationToken ct = default)
    {
        long size = ChainWalk.GuestLength(overlay);
        long oldSize = oldBacking != null ? ChainWalk.GuestLength(oldBacking) : 0;
        long newSize = newBacking != null ? ChainWalk.GuestLength(newBacking) : 0;
        IImage? prefix = null;
        if (newBacking != null)
            for (IImage? l = oldBacking; l != null; l = l.Backing)
                if (ReferenceEquals(l, newBacking))
                    prefix = newBacking;
        float step = size != 0 ? 100f / (size / Math.Min(size, ChunkSize)) : 0;

        byte[] bufOld = ArrayPool<byte>.Shared.Rent(ChunkSize);
        byte[] bufNew = ArrayPool<byte>.Shared.Rent(ChunkSize);
        try
        {
            long n;
            for (long offset = 0; offset < size; offset += n)
            {
                n = Math.Min(ChunkSize, size - offset);
                var st = await ChainWalk.LayerStatusAsync(overlay, offset, n, ct).ConfigureAwait(false);
                n = st.Length;
                if (st.State != BlockState.Unallocated)
                    continue;
                if (prefix != null && oldBacking != null)
                {
                    var (changed, len) = await ChainWalk.IsAllocatedAboveAsync(oldBacking, prefix, offset, n, ct).ConfigureAwait(false);
                    n = len;
                    if (!changed)
                        continue;
                }

                // Trim to what each backing file covers first, then read both at once.
                bool oldIsZero = offset >= oldSize;
                if (!oldIsZero)
                    n = Math.Min(n, oldSize - offset);
                bool newIsZero = newBacking == null || offset >= newSize;
                if (!newIsZero)
                    n = Math.Min(n, newSize - offset);
                ValueTask readOld = default, readNew = default;
                if (oldIsZero)
                    bufOld.AsSpan(0, (int)n).Clear();
                else
                    readOld = oldBacking!.ReadAsync(bufOld.AsMemory(0, (int)n), offset, ct);
                if (newIsZero)
                    bufNew.AsSpan(0, (int)n).Clear();
                else
                    readNew = newBacking!.ReadAsync(bufNew.AsMemory(0, (int)n), offset, ct);
                await readOld.ConfigureAwait(false);
                await readNew.ConfigureAwait(false);

                long done = 0;
                while (done < n)
                {
                    bool differ = CompareSectors(bufOld.AsSpan((int)done, (int)(n - done)), bufNew.AsSpan((int)done, (int)(n - done)), out int run);
                    if (differ)
                    {
                        if (oldIsZero)
                            await overlay.WriteZeroesAsync(offset + done, run, ZeroFlags.None, ct).ConfigureAwait(false);
                        else
                            await overlay.WriteAsync(bufOld.AsMemory((int)done, run), offset + done, WriteFlags.None, ct).ConfigureAwait(false);
                    }
                    done += run;
                }
                progress?.Invoke(step);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(bufOld);
            ArrayPool<byte>.Shared.Return(bufNew);
        }
    }

    /// <summary>
    /// Whether the first 512-byte sector differs, and how many bytes from the start share that answer, sector by
    /// sector (qemu-img's compare_buffers).
    /// </summary>
    public static bool CompareSectors(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b, out int length)
    {
        int i = Math.Min(a.Length, 512);
        bool res = !a[..i].SequenceEqual(b[..i]);
        while (i < a.Length)
        {
            int len = Math.Min(a.Length - i, 512);
            if (!a.Slice(i, len).SequenceEqual(b.Slice(i, len)) != res)
                break;
            i += len;
        }
        length = i;
        return res;
    }

    /// <summary>
    /// Rebases an open qcow2 overlay onto <paramref name="newBacking"/> (null: no backing file, the overlay becomes
    /// standalone). Safe mode copies what differs first; then the header records <paramref name="newName"/> and
    /// <paramref name="newFormat"/> exactly as given, and reads go through the new backing image. The caller keeps
    /// ownership of the old backing image, which the overlay no longer references afterwards.
    /// </summary>
    public static async ValueTask RebaseAsync(Qcow2Image overlay, IImage? newBacking, string? newName, string? newFormat,
        bool safe, Action<float>? progress = null, CancellationToken ct = default)
    {
        if (safe)
            await CopyDifferencesAsync(overlay, overlay.Backing, newBacking, progress, ct).ConfigureAwait(false);
        await overlay.FlushAsync(ct).ConfigureAwait(false);
        await overlay.ChangeBackingFileAsync(newName, newName != null ? newFormat : null, ct).ConfigureAwait(false);
        overlay.SetBacking(newBacking);
    }
}
