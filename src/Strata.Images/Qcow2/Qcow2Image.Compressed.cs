using System.Buffers;
using Strata.Images.Format;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

public sealed partial class Qcow2Image
{
    /// <summary>
    /// Writes one guest cluster compressed, as QEMU 7.2's qcow2_co_pwritev_compressed_task: <paramref name="cluster"/>
    /// is the whole cluster at the cluster-aligned <paramref name="offset"/> (only the image's last cluster may be
    /// shorter; it is padded with zeroes). When the data does not compress to less than a cluster it is written as
    /// a normal cluster. Compression cannot overwrite: the cluster must not be allocated in this image yet.
    /// The L2 table (allocated first when needed), the packed bytes and the L2 entry (compressed descriptor, no
    /// COPIED flag, zero subcluster bitmap) are all handled under the image lock.
    /// </summary>
    /// <exception cref="ArgumentException">The offset is not cluster aligned, or the length is not a whole cluster (except at the end).</exception>
    /// <exception cref="ImageException">The cluster is already allocated.</exception>
    public async ValueTask WriteCompressedAsync(ReadOnlyMemory<byte> cluster, long offset, CancellationToken ct = default)
    {
        CheckRange(offset, cluster.Length);
        CheckWritable();
        if (cluster.Length == 0)
        {
            // QEMU: a zero-length compressed write aligns the end of the file to a sector boundary.
            long len = _file.Length;
            long aligned = (len + CompressedSectorSize - 1) & ~(long)(CompressedSectorSize - 1);
            if (aligned != len)
                await _file.SetLengthAsync(aligned, Strata.Images.Storage.Preallocation.Off, ct).ConfigureAwait(false);
            return;
        }
        if ((offset & (_cs - 1)) != 0)
            throw new ArgumentException($"Compressed write at 0x{offset:x} is not cluster aligned in '{_file.Name}'", nameof(offset));
        if (cluster.Length != _cs && (cluster.Length > _cs || offset + cluster.Length != _h.Size))
            throw new ArgumentException($"Compressed write of {cluster.Length} bytes at 0x{offset:x} is not a whole cluster in '{_file.Name}'", nameof(cluster));

        byte[] input = ArrayPool<byte>.Shared.Rent(_cs);
        byte[] output = ArrayPool<byte>.Shared.Rent(_cs);
        try
        {
            cluster.Span.CopyTo(input);
            input.AsSpan(cluster.Length, _cs - cluster.Length).Clear();
            int outLen = Qcow2Compression.Compress(_h.CompressionType, input.AsSpan(0, _cs), output.AsSpan(0, _cs - 1));
            if (outLen < 0)
            {
                // Does not compress: an ordinary write of the given bytes.
                await WriteAsync(cluster, offset, WriteFlags.None, ct).ConfigureAwait(false);
                return;
            }

            await _lock.WaitAsync(ct).ConfigureAwait(false);
            try
            {
                await MarkDirtyIfLazyAsync(ct).ConfigureAwait(false);
                var t = await GetL2ForWriteAsync(offset, ct).ConfigureAwait(false);
                int idx = L2Index(offset);
                ulong old = GetL2Entry(t, idx);
                if ((old & L2OffsetMask) != 0)
                    throw new ImageException($"Cannot write a compressed cluster at 0x{offset:x} in '{_file.Name}': the cluster is already allocated");
                long host = await _rc.AllocateBytesAsync(outLen, ct).ConfigureAwait(false);
                long nbCsectors = (host + outLen - 1) / CompressedSectorSize - host / CompressedSectorSize;
                ulong entry = OflagCompressed | ((ulong)nbCsectors << CompressedShift) | (ulong)host;
                await _file.WriteAsync(output.AsMemory(0, outLen), host, ct).ConfigureAwait(false);
                SetL2(t, idx, entry, 0);
                await FlushIfCachesFullAsync(ct).ConfigureAwait(false);
            }
            finally
            {
                _lock.Release();
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(input);
            ArrayPool<byte>.Shared.Return(output);
        }
    }
}
