namespace Strata.Interop.Tests.Qcow2.OpsModel;

/// <summary>One persistent bitmap as QEMU keeps it: a bit per granule, set for every granule a write touches.</summary>
internal sealed class BitmapModel(string name, int granBits, long size, bool enabled)
{
    public string Name { get; } = name;
    public int GranBits { get; } = granBits;
    public bool Enabled { get; set; } = enabled;
    public bool[] Bits { get; private set; } = new bool[(size + (1L << granBits) - 1) >> granBits];

    public void Mark(long off, long len)
    {
        if (len <= 0)
            return;
        for (long i = off >> GranBits; i <= (off + len - 1) >> GranBits && i < Bits.Length; i++)
            Bits[i] = true;
    }

    /// <summary>bdrv_dirty_bitmap_truncate: bits past the new end go, new granules are clean.</summary>
    public void Resize(long size)
    {
        var b = Bits;
        Array.Resize(ref b, (int)((size + (1L << GranBits) - 1) >> GranBits));
        // A granule cut in half by a shrink keeps its bit; one that is gone entirely and comes back is clean.
        Bits = b;
    }

    /// <summary>The dirty ranges, merged, clipped to the disk size (as QEMU's NBD dirty-bitmap context reports them).</summary>
    public List<(long Offset, long Length)> Dirty(long size)
    {
        var list = new List<(long, long)>();
        for (long i = 0; i < Bits.Length;)
        {
            if (!Bits[i])
            {
                i++;
                continue;
            }
            long j = i;
            while (j < Bits.Length && Bits[j])
                j++;
            list.Add((i << GranBits, Math.Min(j << GranBits, size) - (i << GranBits)));
            i = j;
        }
        return list;
    }
}

/// <summary>An internal snapshot: its ID, name, and the disk it froze (its length is the snapshot's disk size).</summary>
internal sealed class SnapshotModel(string id, string name, byte[] data)
{
    public string Id { get; } = id;
    public string Name { get; } = name;
    public byte[] Data { get; set; } = data;

    /// <summary>
    /// How much of <see cref="Data"/> is known. A snapshot reads what it does not hold from the backing file; after a
    /// rebase or commit the model learns its content from QEMU, which shows it only up to the current disk size.
    /// </summary>
    public long KnownLength { get; set; } = data.Length;
}

/// <summary>
/// Everything the test expects of the overlay image: the guest view of the active disk (through the backing file),
/// every snapshot, every bitmap and the header settings; and the guest view of the base image below it.
/// </summary>
internal sealed class ImageOpsModel
{
    public required int ClusterSize { get; init; }
    public required bool ExtendedL2 { get; init; }
    public int Version { get; set; }
    public int RefcountBits { get; set; }
    public byte[] Active { get; set; } = [];
    public long Size => Active.Length;
    public List<SnapshotModel> Snapshots { get; } = [];
    public List<BitmapModel> Bitmaps { get; } = [];
    /// <summary>The base image's guest view, or null when the sequence has no base image.</summary>
    public byte[]? Base { get; set; }
    /// <summary>Whether the overlay's backing file is the base image at the moment.</summary>
    public bool Backed { get; set; }
    /// <summary>Downgrading drops the bitmaps' autoclear bit: QEMU leaves their clusters leaked (check exit 3).</summary>
    public bool LeaksExpected { get; set; }
    /// <summary>
    /// A v3 zero write that keeps the allocation may have left a zero-flagged entry on a cluster a snapshot shares.
    /// QEMU 7.2's downgrade writes zeroes into such a cluster in place (the snapshot's data is lost and qemu-img check
    /// reports OFLAG_COPIED errors), so the test does not downgrade such an image while it has snapshots.
    /// </summary>
    public bool ZeroAllocWritten { get; set; }

    /// <summary>What a read past the end of the backing file gives: zeroes.</summary>
    public byte[] BackingView(long size)
    {
        var v = new byte[size];
        if (Backed && Base != null)
            Array.Copy(Base, v, Math.Min(size, Base.Length));
        return v;
    }

    public void MarkEnabled(long off, long len)
    {
        foreach (var b in Bitmaps)
            if (b.Enabled)
                b.Mark(off, len);
    }

    public void Resize(long size)
    {
        var a = Active;
        Array.Resize(ref a, (int)size);
        Active = a;
        foreach (var b in Bitmaps)
            b.Resize(size);
    }
}
