using System.Buffers.Binary;
using System.Numerics;
using Strata.Images.Format;
using Strata.Images.Storage;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

/// <summary>Creation options with qemu-img's names and defaults.</summary>
public sealed record Qcow2CreateOptions
{
    public long Size { get; init; }
    /// <summary>2 (compat=0.10) or 3 (compat=1.1).</summary>
    public int Version { get; init; } = 3;
    public int ClusterSize { get; init; } = 65536;
    public int RefcountBits { get; init; } = 16;
    public bool LazyRefcounts { get; init; }
    public bool ExtendedL2 { get; init; }
    public CompressionType CompressionType { get; init; } = CompressionType.Zlib;
    public Preallocation Preallocation { get; init; } = Preallocation.Off;
    public string? BackingFile { get; init; }
    public string? BackingFormat { get; init; }
}

/// <summary>Creates qcow2 images laid out byte for byte as qemu-img 7.2 lays them out.</summary>
public static class Qcow2Creator
{
    /// <summary>Checks options the way QEMU's qcow2_co_create does, with its messages.</summary>
    public static void Validate(Qcow2CreateOptions o)
    {
        if (o.Size < 0)
            throw new ImageException("Image size must not be negative");
        if ((o.Size & 511) != 0)
            throw new ImageException("Image size must be a multiple of 512 bytes");
        if (o.ClusterSize < 512 || o.ClusterSize > 2 * 1024 * 1024 || !BitOperations.IsPow2(o.ClusterSize))
            throw new ImageException("Cluster size must be a power of two between 512 and 2048k");
        if (o.Version is not (2 or 3))
            throw new ImageException($"Invalid compatibility level: '{o.Version}'");
        if (o.RefcountBits < 1 || o.RefcountBits > 64 || !BitOperations.IsPow2(o.RefcountBits))
            throw new ImageException("Refcount width must be a power of two and may not exceed 64 bits");
        if (o.Version < 3 && o.RefcountBits != 16)
            throw new ImageException("Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)");
        if (o.Version < 3 && o.LazyRefcounts)
            throw new ImageException("Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)");
        if (o.ExtendedL2)
        {
            if (o.Version < 3)
                throw new ImageException("Extended L2 entries are only supported with compatibility level 1.1 and above (use compat=1.1 or greater)");
            if (o.ClusterSize < 16384)
                throw new ImageException("Extended L2 entries are only supported with cluster sizes of at least 16 KiB");
        }
        if (o.CompressionType != CompressionType.Zlib && o.Version < 3)
            throw new ImageException("Non-zlib compression type is only supported with compatibility level 1.1 and above (use compat=1.1 or greater)");
        if (o.BackingFormat != null && o.BackingFile == null)
            throw new ImageException("Backing format cannot be used without backing file");
        if (o.BackingFile != null && o.Preallocation != Preallocation.Off && !o.ExtendedL2)
            throw new ImageException("Backing file and preallocation can only be used at the same time if extended_l2 is on");
        if (o.BackingFile != null && o.BackingFile.Length > MaxBackingFileNameLength)
            throw new ImageException("Backing file name too long");
        int bits = BitOperations.Log2((uint)o.ClusterSize);
        int l2Bits = bits - (o.ExtendedL2 ? 4 : 3);
        long perL1 = 1L << (bits + l2Bits);
        if ((o.Size + perL1 - 1) / perL1 * 8 > MaxL1SizeBytes)
            throw new ImageException("Image size is too large for this cluster size");
    }

    /// <summary>Creates the image on a fresh (empty) storage, then opens it with <paramref name="openOptions"/>.</summary>
    public static async ValueTask<Qcow2Image> CreateAsync(IStorage file, Qcow2CreateOptions o, Qcow2OpenOptions? openOptions = null, CancellationToken ct = default)
    {
        Validate(o);
        int cs = o.ClusterSize;
        int cb = BitOperations.Log2((uint)cs);

        // Step 1 (as qcow2_co_create): an empty image with a one-cluster refcount table at cluster 1 and
        // one refcount block at cluster 2 that counts clusters 0..2.
        var h = new Qcow2Header
        {
            Version = o.Version,
            ClusterBits = cb,
            Size = 0,
            RefcountOrder = BitOperations.Log2((uint)o.RefcountBits),
            RefcountTableOffset = cs,
            RefcountTableClusters = 1,
            HeaderLength = o.Version >= 3 ? V3HeaderLength : V2HeaderLength,
            CompressionType = o.CompressionType,
        };
        if (o.ExtendedL2)
            h.IncompatibleFeatures |= IncompatExtendedL2;
        if (o.CompressionType != CompressionType.Zlib)
            h.IncompatibleFeatures |= IncompatCompression;
        if (o.LazyRefcounts)
            h.CompatibleFeatures |= CompatLazyRefcounts;

        await file.SetLengthAsync(0, Preallocation.Off, ct).ConfigureAwait(false);
        await file.WriteAsync(h.Serialize(), 0, ct).ConfigureAwait(false);
        var tables = new byte[2 * cs];
        BinaryPrimitives.WriteUInt64BigEndian(tables, (ulong)(2 * cs));
        for (int i = 0; i < 3; i++)
            RefcountTable.Set(tables.AsSpan(cs), h.RefcountOrder, i, 1);
        await file.WriteAsync(tables, cs, ct).ConfigureAwait(false);
        await file.FlushAsync(ct).ConfigureAwait(false);

        // Step 2: open it, grow it to its size (allocates the L1 table), record the backing file, preallocate.
        var img = await Qcow2Image.OpenAsync(file, (openOptions ?? new Qcow2OpenOptions()) with { OpenBacking = null }, ct).ConfigureAwait(false);
        try
        {
            if (o.Size > 0)
                await img.ResizeAsync(o.Size, allowShrink: false, Preallocation.Off, ct).ConfigureAwait(false);
            if (o.BackingFile != null)
            {
                img.Header.BackingFileName = o.BackingFile;
                img.Header.BackingFormat = o.BackingFormat;
            }
            await img.WriteHeaderAsync(ct).ConfigureAwait(false);
            if (o.Preallocation != Preallocation.Off && o.Size > 0)
                await img.PreallocateAsync(0, o.Size, o.Preallocation, ct).ConfigureAwait(false);
            await img.FlushAsync(ct).ConfigureAwait(false);
        }
        catch
        {
            await img.DisposeAsync().ConfigureAwait(false);
            throw;
        }
        return img;
    }
}
