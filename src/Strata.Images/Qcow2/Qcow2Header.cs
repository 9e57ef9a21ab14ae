using System.Buffers.Binary;
using System.Text;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

/// <summary>A header extension Strata does not interpret; kept byte for byte when the header is rewritten.</summary>
public sealed record UnknownHeaderExtension(uint Type, byte[] Data);

/// <summary>The bitmaps header extension (the directory itself lives elsewhere).</summary>
public sealed record BitmapsExtension(uint Count, ulong DirectorySize, ulong DirectoryOffset);

/// <summary>
/// The qcow2 header with its extensions and backing file name: everything that lives in cluster 0.
/// Parsing validates every field against QEMU's limits before anything is sized by it.
/// </summary>
public sealed class Qcow2Header
{
    public int Version { get; set; } = 3;
    public int ClusterBits { get; set; } = 16;
    public long Size { get; set; }
    public uint CryptMethod { get; set; }
    public int L1Size { get; set; }
    public long L1TableOffset { get; set; }
    public long RefcountTableOffset { get; set; }
    public int RefcountTableClusters { get; set; }
    public int SnapshotCount { get; set; }
    public long SnapshotsOffset { get; set; }
    public ulong IncompatibleFeatures { get; set; }
    public ulong CompatibleFeatures { get; set; }
    public ulong AutoclearFeatures { get; set; }
    public int RefcountOrder { get; set; } = 4;
    public int HeaderLength { get; set; } = V3HeaderLength;
    public CompressionType CompressionType { get; set; }
    /// <summary>Header bytes past the fields Strata knows (offset 112 up to header_length), preserved.</summary>
    public byte[] UnknownHeaderFields { get; set; } = [];

    public string? BackingFileName { get; set; }
    public string? BackingFormat { get; set; }
    public string? ExternalDataFile { get; set; }
    public BitmapsExtension? Bitmaps { get; set; }
    public byte[]? CryptoExtension { get; set; }
    public List<UnknownHeaderExtension> UnknownExtensions { get; } = [];

    /// <summary>Feature names the image itself carries (type, bit) → name; used to name features Strata does not know.</summary>
    public Dictionary<(byte Type, byte Bit), string> FeatureNames { get; } = [];

    /// <summary>Where the backing name was found (or will be written); 0 when there is none.</summary>
    public long BackingFileOffset { get; set; }

    public int ClusterSize => 1 << ClusterBits;
    public int RefcountBits => 1 << RefcountOrder;
    public bool ExtendedL2 => (IncompatibleFeatures & IncompatExtendedL2) != 0;
    public bool IsDirty => (IncompatibleFeatures & IncompatDirty) != 0;
    public bool IsCorrupt => (IncompatibleFeatures & IncompatCorrupt) != 0;
    public bool LazyRefcounts => (CompatibleFeatures & CompatLazyRefcounts) != 0;
    public int L2EntrySize => ExtendedL2 ? 16 : 8;
    public int L2Entries => ClusterSize / L2EntrySize;

    /// <summary>Number of L1 entries needed to map <paramref name="size"/> bytes.</summary>
    public long L1EntriesFor(long size)
    {
        long perL1 = (long)L2Entries << ClusterBits;
        return (size + perL1 - 1) / perL1;
    }

    /// <summary>Parses and validates cluster 0 (at least the first <see cref="V2HeaderLength"/> bytes; all of cluster 0 when longer).</summary>
    /// <param name="fileLength">Length of the image file, for bounds checks of the tables.</param>
    public static Qcow2Header Parse(ReadOnlySpan<byte> buf, long fileLength, string fileName)
    {
        if (buf.Length < V2HeaderLength || BinaryPrimitives.ReadUInt32BigEndian(buf) != Magic)
            throw new ImageException($"Image is not in qcow2 format: '{fileName}'");

        var h = new Qcow2Header();
        h.Version = (int)BinaryPrimitives.ReadUInt32BigEndian(buf[4..]);
        if (h.Version is not (2 or 3))
            throw new UnsupportedFeatureException($"Unsupported qcow2 version {h.Version} in '{fileName}'");

        ulong backingOffset = BinaryPrimitives.ReadUInt64BigEndian(buf[8..]);
        uint backingSize = BinaryPrimitives.ReadUInt32BigEndian(buf[16..]);
        uint clusterBits = BinaryPrimitives.ReadUInt32BigEndian(buf[20..]);
        if (clusterBits is < MinClusterBits or > MaxClusterBits)
            throw new CorruptImageException($"Unsupported cluster size: 2^{clusterBits} in '{fileName}'");
        h.ClusterBits = (int)clusterBits;
        int cs = h.ClusterSize;

        ulong size = BinaryPrimitives.ReadUInt64BigEndian(buf[24..]);
        if (size > long.MaxValue / 2)
            throw new CorruptImageException($"Image size {size} is too big in '{fileName}'");
        h.Size = (long)size;
        h.CryptMethod = BinaryPrimitives.ReadUInt32BigEndian(buf[32..]);
        uint l1Size = BinaryPrimitives.ReadUInt32BigEndian(buf[36..]);
        ulong l1Offset = BinaryPrimitives.ReadUInt64BigEndian(buf[40..]);
        ulong rtOffset = BinaryPrimitives.ReadUInt64BigEndian(buf[48..]);
        uint rtClusters = BinaryPrimitives.ReadUInt32BigEndian(buf[56..]);
        uint nbSnapshots = BinaryPrimitives.ReadUInt32BigEndian(buf[60..]);
        ulong snapOffset = BinaryPrimitives.ReadUInt64BigEndian(buf[64..]);

        if (h.Version == 2)
        {
            h.RefcountOrder = 4;
            h.HeaderLength = V2HeaderLength;
        }
        else
        {
            if (buf.Length < V3MinHeaderLength)
                throw new CorruptImageException($"qcow2 header too short in '{fileName}'");
            h.IncompatibleFeatures = BinaryPrimitives.ReadUInt64BigEndian(buf[72..]);
            h.CompatibleFeatures = BinaryPrimitives.ReadUInt64BigEndian(buf[80..]);
            h.AutoclearFeatures = BinaryPrimitives.ReadUInt64BigEndian(buf[88..]);
            uint order = BinaryPrimitives.ReadUInt32BigEndian(buf[96..]);
            uint hlen = BinaryPrimitives.ReadUInt32BigEndian(buf[100..]);
            if (hlen < V3MinHeaderLength)
                throw new CorruptImageException($"qcow2 header too short in '{fileName}'");
            if (hlen % 8 != 0)
                throw new CorruptImageException($"qcow2 header length {hlen} is not a multiple of 8 in '{fileName}'");
            if (hlen > cs)
                throw new CorruptImageException($"qcow2 header exceeds cluster size in '{fileName}'");
            if (hlen > buf.Length)
                throw new CorruptImageException($"qcow2 header is truncated in '{fileName}'");
            if (order > 6)
                throw new CorruptImageException($"Reference count entry width too large; may not exceed 64 bits in '{fileName}'");
            h.RefcountOrder = (int)order;
            h.HeaderLength = (int)hlen;
            if (hlen > 104)
            {
                byte ct = buf[104];
                if (ct > 1)
                    throw new UnsupportedFeatureException($"Unknown compression type {ct} in '{fileName}'");
                h.CompressionType = (CompressionType)ct;
            }
            if (hlen > V3HeaderLength)
                h.UnknownHeaderFields = buf[V3HeaderLength..(int)hlen].ToArray();
        }

        if ((h.IncompatibleFeatures & IncompatCompression) != 0) {
            if (h.CompressionType == CompressionType.Zlib)
                throw new CorruptImageException($"compression_type field is zero while the compression type bit is set in '{fileName}'");
        }
        else if (h.CompressionType != CompressionType.Zlib)
            throw new CorruptImageException($"compression type bit is not set while compression_type is non-zero in '{fileName}'");

        if (h.ExtendedL2 && h.ClusterBits < MinExtendedL2ClusterBits)
            throw new CorruptImageException($"Extended L2 entries need a cluster size of at least 16 KiB in '{fileName}'");

        // Tables, checked before anything is sized by them.
        if (rtClusters > MaxRefcountTableSizeBytes / cs)
            throw new CorruptImageException($"Reference count table too large in '{fileName}'");
        if (rtClusters == 0)
            throw new CorruptImageException($"Image does not contain a reference count table in '{fileName}'");
        CheckTable(rtOffset, (long)rtClusters * cs, cs, fileLength, "Reference count table", fileName);
        h.RefcountTableOffset = (long)rtOffset;
        h.RefcountTableClusters = (int)rtClusters;

        if (l1Size > MaxL1SizeBytes / 8)
            throw new CorruptImageException($"Active L1 table too large in '{fileName}'");
        if (l1Size < h.L1EntriesFor(h.Size))
            throw new CorruptImageException($"L1 table is too small in '{fileName}'");
        if (l1Size > 0)
            CheckTable(l1Offset, l1Size * 8L, cs, fileLength, "Active L1 table", fileName);
        h.L1Size = (int)l1Size;
        h.L1TableOffset = (long)l1Offset;

        if (nbSnapshots > MaxSnapshots)
            throw new CorruptImageException($"Too many snapshots in '{fileName}'");
        if (nbSnapshots > 0)
            CheckTable(snapOffset, nbSnapshots * 40L, cs, fileLength, "Snapshot table", fileName);
        h.SnapshotCount = (int)nbSnapshots;
        h.SnapshotsOffset = (long)snapOffset;

        if (backingOffset != 0)
        {
            if (backingOffset > (ulong)cs || backingSize > MaxBackingFileNameLength || backingOffset + backingSize > (ulong)cs)
                throw new CorruptImageException($"Backing file name too long in '{fileName}'");
            if (backingOffset + backingSize > (ulong)buf.Length)
                throw new CorruptImageException($"Backing file name lies past the end of '{fileName}'");
            h.BackingFileOffset = (long)backingOffset;
            h.BackingFileName = Encoding.UTF8.GetString(buf.Slice((int)backingOffset, (int)backingSize));
        }

        // v2 images may carry extensions too (the backing format).
        h.ParseExtensions(buf, fileLength, fileName);

        return h;
    }

    private static void CheckTable(ulong offset, long bytes, int cs, long fileLength, string what, string fileName)
    {
        if ((offset & (ulong)(cs - 1)) != 0)
            throw new CorruptImageException($"{what} offset 0x{offset:x} is not aligned to the cluster size in '{fileName}'");
        if (offset == 0)
            throw new CorruptImageException($"{what} overlaps the image header in '{fileName}'");
        if (offset > (ulong)MaxHostOffset || (ulong)bytes > (ulong)MaxHostOffset - offset)
            throw new CorruptImageException($"{what} offset 0x{offset:x} is out of range in '{fileName}'");
        if ((long)offset + bytes > fileLength)
            throw new CorruptImageException($"{what} at 0x{offset:x} ({bytes} bytes) lies past the end of '{fileName}' ({fileLength} bytes)");
    }

    private void ParseExtensions(ReadOnlySpan<byte> buf, long fileLength, string fileName)
    {
        int end = BackingFileOffset != 0 ? (int)BackingFileOffset : Math.Min(buf.Length, ClusterSize);
        int pos = HeaderLength;
        while (true)
        {
            if (pos + 8 > end)
                break; // no room for another extension: QEMU stops here too
            uint type = BinaryPrimitives.ReadUInt32BigEndian(buf[pos..]);
            uint len = BinaryPrimitives.ReadUInt32BigEndian(buf[(pos + 4)..]);
            pos += 8;
            // QEMU checks the length before looking at the type, even for the end marker.
            if (len > (uint)(end - pos))
                throw new CorruptImageException($"Header extension too large: 0x{type:x8} claims {len} bytes in '{fileName}'");
            if (type == ExtEnd)
                break;
            var data = buf.Slice(pos, (int)len);
            switch (type)
            {
                case ExtBackingFormat:
                    if (len > MaxBackingFormatLength)
                        throw new CorruptImageException($"Backing format name too long ({len} bytes) in '{fileName}'");
                    BackingFormat = Encoding.UTF8.GetString(data);
                    break;
                case ExtFeatureTable:
                    // Regenerated on every header write; the names are kept to report unknown features by name.
                    for (int i = 0; i + 48 <= data.Length; i += 48)
                    {
                        var name = data.Slice(i + 2, 46);
                        int nul = name.IndexOf((byte)0);
                        FeatureNames[(data[i], data[i + 1])] = Encoding.UTF8.GetString(nul < 0 ? name : name[..nul]);
                    }
                    break;
                case ExtBitmaps:
                    // qcow2_read_extensions, with QEMU's messages; the directory itself is read (past the end of the
                    // file as zeroes) and checked when the bitmaps are loaded.
                    if (len != 24)
                        throw new CorruptImageException($"bitmaps_ext: Invalid extension length in '{fileName}'");
                    if ((AutoclearFeatures & AutoclearBitmaps) != 0)
                    {
                        uint count = BinaryPrimitives.ReadUInt32BigEndian(data);
                        uint reserved = BinaryPrimitives.ReadUInt32BigEndian(data[4..]);
                        ulong dirSize = BinaryPrimitives.ReadUInt64BigEndian(data[8..]);
                        ulong dirOffset = BinaryPrimitives.ReadUInt64BigEndian(data[16..]);
                        if (reserved != 0)
                            throw new CorruptImageException($"bitmaps_ext: Reserved field is not zero in '{fileName}'");
                        if (count > MaxBitmaps)
                            throw new CorruptImageException($"bitmaps_ext: Image has {count} bitmaps, exceeding the QEMU supported maximum of {MaxBitmaps} in '{fileName}'");
                        if (count == 0)
                            throw new CorruptImageException($"found bitmaps extension with zero bitmaps in '{fileName}'");
                        if ((dirOffset & (ulong)(ClusterSize - 1)) != 0)
                            throw new CorruptImageException($"bitmaps_ext: invalid bitmap directory offset in '{fileName}'");
                        if (dirSize > MaxBitmapDirectorySize)
                            throw new CorruptImageException($"bitmaps_ext: bitmap directory size ({dirSize}) exceeds the maximum supported size ({MaxBitmapDirectorySize}) in '{fileName}'");
                        Bitmaps = new BitmapsExtension(count, dirSize, dirOffset);
                    }
                    // Else the extension is stale (written by an old program that did not know bitmaps): ignored, as QEMU does.
                    break;
                case ExtCrypto:
                    CryptoExtension = data.ToArray();
                    break;
                case ExtDataFile:
                    ExternalDataFile = Encoding.UTF8.GetString(data);
                    break;
                default:
                    UnknownExtensions.Add(new UnknownHeaderExtension(type, data.ToArray()));
                    break;
            }
            pos += (int)((len + 7) & ~7u);
        }
    }

    /// <summary>
    /// Serialises cluster 0 exactly as QEMU 7.2's qcow2_update_header lays it out: header, backing format,
    /// data file, crypto, feature table (v3), bitmaps, preserved unknown extensions, end marker, backing name.
    /// </summary>
    public byte[] Serialize()
    {
        int cs = ClusterSize;
        var buf = new byte[cs];
        var s = buf.AsSpan();
        BinaryPrimitives.WriteUInt32BigEndian(s, Magic);
        BinaryPrimitives.WriteUInt32BigEndian(s[4..], (uint)Version);
        BinaryPrimitives.WriteUInt32BigEndian(s[20..], (uint)ClusterBits);
        BinaryPrimitives.WriteUInt64BigEndian(s[24..], (ulong)Size);
        BinaryPrimitives.WriteUInt32BigEndian(s[32..], CryptMethod);
        BinaryPrimitives.WriteUInt32BigEndian(s[36..], (uint)L1Size);
        BinaryPrimitives.WriteUInt64BigEndian(s[40..], (ulong)L1TableOffset);
        BinaryPrimitives.WriteUInt64BigEndian(s[48..], (ulong)RefcountTableOffset);
        BinaryPrimitives.WriteUInt32BigEndian(s[56..], (uint)RefcountTableClusters);
        BinaryPrimitives.WriteUInt32BigEndian(s[60..], (uint)SnapshotCount);
        BinaryPrimitives.WriteUInt64BigEndian(s[64..], (ulong)SnapshotsOffset);
        int pos;
        if (Version >= 3)
        {
            BinaryPrimitives.WriteUInt64BigEndian(s[72..], IncompatibleFeatures);
            BinaryPrimitives.WriteUInt64BigEndian(s[80..], CompatibleFeatures);
            // Unknown autoclear bits are cleared whenever the image is written (spec).
            BinaryPrimitives.WriteUInt64BigEndian(s[88..], AutoclearFeatures & AutoclearKnownMask);
            BinaryPrimitives.WriteUInt32BigEndian(s[96..], (uint)RefcountOrder);
            int hlen = V3HeaderLength + UnknownHeaderFields.Length;
            HeaderLength = hlen;
            BinaryPrimitives.WriteUInt32BigEndian(s[100..], (uint)hlen);
            s[104] = (byte)CompressionType;
            UnknownHeaderFields.CopyTo(s[V3HeaderLength..]);
            pos = hlen;
        }
        else
        {
            pos = V2HeaderLength;
        }

        void Ext(Span<byte> b, ref int p, uint type, ReadOnlySpan<byte> data)
        {
            int padded = (data.Length + 7) & ~7;
            if (p + 8 + padded > b.Length)
                throw new ImageException("Header extensions do not fit in the first cluster");
            BinaryPrimitives.WriteUInt32BigEndian(b[p..], type);
            BinaryPrimitives.WriteUInt32BigEndian(b[(p + 4)..], (uint)data.Length);
            data.CopyTo(b[(p + 8)..]);
            p += 8 + padded;
        }

        if (BackingFormat != null)
            Ext(s, ref pos, ExtBackingFormat, Encoding.UTF8.GetBytes(BackingFormat));
        if (ExternalDataFile != null)
            Ext(s, ref pos, ExtDataFile, Encoding.UTF8.GetBytes(ExternalDataFile));
        if (CryptoExtension != null)
            Ext(s, ref pos, ExtCrypto, CryptoExtension);
        // QEMU 7.2 writes the feature table only into v3 images with clusters larger than 4 KiB (observed).
        if (Version >= 3 && cs > 4096)
            Ext(s, ref pos, ExtFeatureTable, FeatureTable);
        if (Bitmaps != null)
        {
            Span<byte> b = stackalloc byte[24];
            b.Clear();
            BinaryPrimitives.WriteUInt32BigEndian(b, Bitmaps.Count);
            BinaryPrimitives.WriteUInt64BigEndian(b[8..], Bitmaps.DirectorySize);
            BinaryPrimitives.WriteUInt64BigEndian(b[16..], Bitmaps.DirectoryOffset);
            Ext(s, ref pos, ExtBitmaps, b);
        }
        foreach (var u in UnknownExtensions)
            Ext(s, ref pos, u.Type, u.Data);
        Ext(s, ref pos, ExtEnd, []);

        if (BackingFileName != null)
        {
            var name = Encoding.UTF8.GetBytes(BackingFileName);
            if (name.Length > MaxBackingFileNameLength || pos + name.Length > cs)
                throw new ImageException($"Backing file name '{BackingFileName}' is too long");
            name.CopyTo(s[pos..]);
            BackingFileOffset = pos;
            BinaryPrimitives.WriteUInt64BigEndian(s[8..], (ulong)pos);
            BinaryPrimitives.WriteUInt32BigEndian(s[16..], (uint)name.Length);
        }
        else
        {
            BackingFileOffset = 0;
        }
        return buf;
    }

    /// <summary>The 8-entry feature name table QEMU 7.2 writes into every v3 image.</summary>
    private static readonly byte[] FeatureTable = BuildFeatureTable();

    private static byte[] BuildFeatureTable()
    {
        (byte type, byte bit, string name)[] features =
        [
            (0, 0, "dirty bit"), (0, 1, "corrupt bit"), (0, 2, "external data file"),
            (0, 3, "compression type"), (0, 4, "extended L2 entries"),
            (1, 0, "lazy refcounts"), (2, 0, "bitmaps"), (2, 1, "raw external data"),
        ];
        var t = new byte[features.Length * 48];
        for (int i = 0; i < features.Length; i++)
        {
            t[i * 48] = features[i].type;
            t[i * 48 + 1] = features[i].bit;
            Encoding.ASCII.GetBytes(features[i].name).CopyTo(t, i * 48 + 2);
        }
        return t;
    }

    /// <summary>Name of an incompatible feature bit: the image's own feature table first, then QEMU's names.</summary>
    public string IncompatibleFeatureName(int bit) =>
        FeatureNames.TryGetValue((0, (byte)bit), out var n) ? n : KnownIncompatibleFeatureName(bit);

    private static string KnownIncompatibleFeatureName(int bit) => bit switch
    {
        0 => "dirty bit",
        1 => "corrupt bit",
        2 => "external data file",
        3 => "compression type",
        4 => "extended L2 entries",
        _ => $"Unknown incompatible feature: {1UL << bit:x}",
    };
}
