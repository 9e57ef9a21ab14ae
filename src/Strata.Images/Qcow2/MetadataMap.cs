namespace Strata.Images.Qcow2;

/// <summary>Kinds of metadata clusters, named as QEMU's overlap checks name them.</summary>
internal enum MetadataKind
{
    Header,
    ActiveL1,
    ActiveL2,
    RefcountTable,
    RefcountBlock,
    SnapshotTable,
    InactiveL1,
    BitmapDirectory,
}

/// <summary>
/// Which host clusters hold metadata (QEMU's "cached" overlap-check template: header, L1 tables, active L2 tables,
/// refcount structures, snapshot table, bitmap directory). Data writes are checked against it, so that an
/// image with broken references or refcounts is marked corrupt instead of having its metadata overwritten.
/// Not thread-safe: used under the image's metadata lock.
/// </summary>
internal sealed class MetadataMap
{
    private readonly Dictionary<long, MetadataKind> _clusters = [];
    private readonly int _clusterBits;

    public MetadataMap(int clusterBits) => _clusterBits = clusterBits;

    public static string Describe(MetadataKind kind) => kind switch
    {
        MetadataKind.Header => "qcow2_header",
        MetadataKind.ActiveL1 => "active L1 table",
        MetadataKind.ActiveL2 => "active L2 table",
        MetadataKind.RefcountTable => "refcount table",
        MetadataKind.RefcountBlock => "refcount block",
        MetadataKind.SnapshotTable => "snapshot table",
        MetadataKind.InactiveL1 => "inactive L1 table",
        _ => "bitmap directory",
    };

    /// <summary>Records [offset, offset+bytes) as <paramref name="kind"/>; returns the kind already there, if any cluster overlaps other metadata.</summary>
    public MetadataKind? Add(long offset, long bytes, MetadataKind kind)
    {
        if (bytes <= 0)
            return null;
        MetadataKind? conflict = null;
        long first = offset >> _clusterBits, last = (offset + bytes - 1) >> _clusterBits;
        for (long c = first; c <= last; c++)
        {
            if (_clusters.TryGetValue(c, out var existing) && existing != kind)
                conflict ??= existing;
            _clusters[c] = kind;
        }
        return conflict;
    }

    public void Remove(long offset, long bytes)
    {
        long first = offset >> _clusterBits, last = (offset + bytes - 1) >> _clusterBits;
        for (long c = first; c <= last; c++)
            _clusters.Remove(c);
    }

    /// <summary>Forgets one cluster if it is of <paramref name="kind"/> (a table replaced by a copy).</summary>
    public void Remove(long offset, MetadataKind kind)
    {
        long c = offset >> _clusterBits;
        if (_clusters.TryGetValue(c, out var k) && k == kind)
            _clusters.Remove(c);
    }

    /// <summary>The name of the metadata the cluster range overlaps, or null.</summary>
    public string? Overlap(long firstCluster, long count)
    {
        if (count <= 0)
            return null;
        if (count <= _clusters.Count)
        {
            for (long c = firstCluster; c < firstCluster + count; c++)
                if (_clusters.TryGetValue(c, out var k))
                    return Describe(k);
            return null;
        }
        foreach (var (c, k) in _clusters)
            if (c >= firstCluster && c < firstCluster + count)
                return Describe(k);
        return null;
    }

    public bool IsMetadata(long offset) => _clusters.ContainsKey(offset >> _clusterBits);
}
