namespace Strata.Images.Qcow2;

public sealed partial class Qcow2Image
{
    private int _metadataPreallocation; // 0: not decided yet, 1: no, 2: yes

    /// <summary>
    /// QEMU 7.2's qcow2_detect_metadata_preallocation(): the image counts as metadata-preallocated when the clusters
    /// with a refcount reach 10/9 of (and 2 more than) the clusters the host file really occupies. Block status then
    /// looks at the host file under data clusters (BDRV_BLOCK_RECURSE), whose holes read as zeroes. Decided once per
    /// open image, on first use, as QEMU does; false when the refcounts cannot be read.
    /// </summary>
    public async ValueTask<bool> IsMetadataPreallocatedAsync(CancellationToken ct = default)
    {
        int known = Volatile.Read(ref _metadataPreallocation);
        if (known != 0)
            return known == 2;
        ObjectDisposedException.ThrowIf(_disposed, this);
        await _lock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            if (_metadataPreallocation == 0)
            {
                bool value;
                try
                {
                    value = await CountsAsMetadataPreallocatedAsync(ct).ConfigureAwait(false);
                }
                catch (Exception e) when (e is IOException or CorruptImageException)
                {
                    value = false;
                }
                Volatile.Write(ref _metadataPreallocation, value ? 2 : 1);
            }
            return _metadataPreallocation == 2;
        }
        finally
        {
            Unlock();
        }
    }

    private async ValueTask<bool> CountsAsMetadataPreallocatedAsync(CancellationToken ct)
    {
        long realClusters = _file.AllocatedBytes >> _cb;
        long threshold = Math.Max(realClusters * 10 / 9, realClusters + 2);
        long endCluster = (_file.Length + _cs - 1) >> _cb;
        long count = 0;
        for (long c = 0; c < endCluster && count < threshold; c++)
        {
            if (!_rc.TryGetCachedRefcount(c, out ulong refcount))
                refcount = await _rc.GetRefcountAsync(c, ct).ConfigureAwait(false);
            if (refcount != 0)
                count++;
        }
        return count >= threshold;
    }
}
