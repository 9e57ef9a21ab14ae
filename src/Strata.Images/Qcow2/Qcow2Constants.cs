namespace Strata.Images.Qcow2;

/// <summary>On-disk constants and QEMU 7.2's sanity limits (block/qcow2.h).</summary>
internal static class Qcow2Constants
{
    public const uint Magic = 0x514649FB;
    public const int V2HeaderLength = 72;
    public const int V3MinHeaderLength = 104;
    /// <summary>QEMU 7.2 writes header_length = 112 (compression type byte + 7 bytes of padding).</summary>
    public const int V3HeaderLength = 112;

    public const int MinClusterBits = 9;
    public const int MaxClusterBits = 21;
    public const int MinExtendedL2ClusterBits = 14;
    public const int SubclustersPerCluster = 32;

    public const long MaxL1SizeBytes = 32L * 1024 * 1024;
    public const long MaxRefcountTableSizeBytes = 8L * 1024 * 1024;
    public const int MaxBackingFileNameLength = 1023;
    public const int MaxBackingFormatLength = 15;
    public const int MaxSnapshots = 65536;
    public const long MaxSnapshotTableSize = 64L * 1024 * 1024;
    public const int MaxSnapshotExtraData = 1024;
    public const int MaxBitmaps = 65535;
    public const long MaxBitmapDirectorySize = 1024L * MaxBitmaps; // QCOW2_MAX_BITMAP_DIRECTORY_SIZE
    /// <summary>Host offsets must fit in 56 bits.</summary>
    public const long MaxHostOffset = (1L << 56) - 1;

    // Header extension magics.
    public const uint ExtEnd = 0;
    public const uint ExtBackingFormat = 0xE2792ACA;
    public const uint ExtFeatureTable = 0x6803F857;
    public const uint ExtBitmaps = 0x23852875;
    public const uint ExtCrypto = 0x0537BE77;
    public const uint ExtDataFile = 0x44415441;

    // Incompatible feature bits.
    public const ulong IncompatDirty = 1UL << 0;
    public const ulong IncompatCorrupt = 1UL << 1;
    public const ulong IncompatDataFile = 1UL << 2;
    public const ulong IncompatCompression = 1UL << 3;
    public const ulong IncompatExtendedL2 = 1UL << 4;
    public const ulong IncompatKnownMask = 0x1F;

    public const ulong CompatLazyRefcounts = 1UL << 0;
    public const ulong AutoclearBitmaps = 1UL << 0;
    public const ulong AutoclearDataFileRaw = 1UL << 1;
    public const ulong AutoclearKnownMask = 0x3;

    // L1 / L2 entry bits.
    public const ulong OflagCopied = 1UL << 63;
    public const ulong OflagCompressed = 1UL << 62;
    public const ulong OflagZero = 1UL;
    public const ulong L1OffsetMask = 0x00FFFFFFFFFFFE00UL;
    public const ulong L1ReservedMask = 0x7F000000000001FFUL;
    public const ulong L2OffsetMask = 0x00FFFFFFFFFFFE00UL;
    public const ulong L2StandardReservedMask = 0x3F000000000001FEUL;
    public const ulong RefTableOffsetMask = 0xFFFFFFFFFFFFFE00UL;
    public const ulong RefTableReservedMask = 0x1FFUL;
    public const ulong SubclusterAllocMask = 0xFFFFFFFFUL;
    public const ulong SubclusterZeroMask = 0xFFFFFFFF00000000UL;

    public const int CompressedSectorSize = 512;
}
