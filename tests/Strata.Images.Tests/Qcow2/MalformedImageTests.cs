using System.Text;
using Strata.Images.Format;
using Strata.Images.Qcow2;
using Strata.Images.Storage;
using Xunit;
using Xunit.Abstractions;
using static Strata.Images.Tests.Qcow2.MalformedImageBuilder;

namespace Strata.Images.Tests.Qcow2;

/// <summary>What a malformed case must do (on top of the rules every case obeys, see <see cref="MalformedImageTests"/>).</summary>
public enum MalformedExpect
{
    /// <summary>A valid image (control): opens, reads as QEMU reads it, and takes writes correctly.</summary>
    Accept,
    /// <summary>Either works correctly or throws an <see cref="ImageException"/> that names the problem and the file.</summary>
    MayAccept,
    /// <summary>Both read-only and read-write opens are refused.</summary>
    RefuseOpen,
    /// <summary>Reading the disk (or opening it) is refused, read-only and read-write.</summary>
    RefuseRead,
    /// <summary>Read-only works; the read-write open is refused with the problem's message.</summary>
    RefuseRwOpen,
}

/// <param name="Problem">Distinctive substrings (case-insensitive); any exception's message must contain one of them.</param>
internal sealed record MalformedCase(string Name, MalformedBase Base, MalformedExpect Expect, string[] Problem, Action<MalformedImageBuilder>? Patch = null);

[CollectionDefinition(nameof(MalformedImageCollection), DisableParallelization = true)]
public sealed class MalformedImageCollection;

/// <summary>
/// A corpus of malformed qcow2 images, each built from a valid Strata-created image by patching bytes. For every
/// case, read-only (ImageOpener) and read-write (Qcow2Image.OpenAsync) sessions open the image, read the disk (all
/// of it, or its first 4 MiB and last 1 MiB when it is larger), and the read-write session writes a little and
/// flushes. Rules:
/// <list type="bullet">
/// <item>Any exception is an <see cref="ImageException"/> (or subclass) whose message names the problem (one of
/// the case's substrings) and the file; never another type.</item>
/// <item>Each session finishes within 20 s and allocates less than 100 MiB.</item>
/// <item>Where qemu-img 7.2 refuses to open the image (info), Strata refuses the read-only open too; where it
/// cannot read the sample, Strata's read-only session fails too; where both read, they read the same bytes.</item>
/// <item>When a read-write session completes, the written data reads back (in the session, after reopening,
/// and through qemu-img), no write placed a table or data on a cluster holding other metadata, and the
/// file grew by less than 64 MiB.</item>
/// <item>Once a read-write session got past open (whether it then completed or refused), <c>qemu-img check</c>
/// finds no more corruptions than it found in the image before.</item>
/// </list>
/// The runs use a non-parallel collection so that process-wide allocation counts belong to the case.
/// Set STRATA_MALFORMED_REPORT to a file name to get one summary line per case appended to it.
/// </summary>
[Collection(nameof(MalformedImageCollection))]
public sealed class MalformedImageTests(ITestOutputHelper output)
{
    private const long MiB = 1 << 20;
    private static readonly TimeSpan CaseTimeout = TimeSpan.FromSeconds(20);
    private const long MaxAllocatedBytes = 100 * MiB;
    private const long MaxGrowth = 64 * MiB;
    private const long HeadSample = 4 * MiB;
    private const long TailSample = 1 * MiB;
    private const int MaxSample = (int)(HeadSample + TailSample);

    // ---------------------------------------------------------------------------------------------
    // The corpus
    // ---------------------------------------------------------------------------------------------

    private static readonly string[] Overlap = ["overlap", "metadata"];

    private static ulong Incompat(MalformedImageBuilder b) => b.U64(OffIncompat);

    private static readonly MalformedCase[] All =
    [
        // Controls: the valid images the cases start from.
        new("valid-v3", MalformedBase.Default, MalformedExpect.Accept, []),
        new("valid-v2", MalformedBase.V2, MalformedExpect.Accept, []),
        new("valid-extended-l2", MalformedBase.ExtendedL2, MalformedExpect.Accept, []),
        new("valid-compressed", MalformedBase.Compressed, MalformedExpect.Accept, []),

        // Truncation.
        new("truncated-below-v2-header", MalformedBase.Default, MalformedExpect.RefuseOpen, ["not in qcow2 format", "too short", "truncated"],
            b => b.SetLength(50)),
        new("truncated-inside-v3-header", MalformedBase.Default, MalformedExpect.RefuseOpen, ["too short", "truncated"],
            b => b.SetLength(100)),
        new("truncated-after-header-cluster", MalformedBase.Default, MalformedExpect.MayAccept, ["past the end", "truncated", "beyond the end"],
            b => b.SetLength(b.ClusterSize)),
        new("truncated-inside-l2-table", MalformedBase.Default, MalformedExpect.MayAccept, ["past the end", "truncated", "beyond the end", "L2"],
            b => b.SetLength(b.L2Table(0) + 100)),
        new("truncated-inside-data-cluster", MalformedBase.Default, MalformedExpect.MayAccept, ["past the end", "truncated", "beyond the end"],
            b => b.SetLength(b.DataCluster((2 * MiB) + 4096) + 6000)),

        // Header fields.
        new("bad-magic", MalformedBase.Default, MalformedExpect.RefuseOpen, ["not in qcow2 format"],
            b => b.SetU32(OffMagic, 0x514649FA)),
        new("version-1", MalformedBase.Default, MalformedExpect.RefuseOpen, ["version 1"],
            b => b.SetU32(OffVersion, 1)),
        new("version-4", MalformedBase.Default, MalformedExpect.RefuseOpen, ["version 4"],
            b => b.SetU32(OffVersion, 4)),
        new("cluster-bits-8", MalformedBase.Default, MalformedExpect.RefuseOpen, ["cluster size", "cluster_bits"],
            b => b.SetU32(OffClusterBits, 8)),
        new("cluster-bits-22", MalformedBase.Default, MalformedExpect.RefuseOpen, ["cluster size", "cluster_bits"],
            b => b.SetU32(OffClusterBits, 22)),
        new("header-length-96", MalformedBase.Default, MalformedExpect.RefuseOpen, ["header too short", "header_length", "header length"],
            b => b.SetU32(OffHeaderLength, 96)),
        new("header-length-108-not-multiple-of-8", MalformedBase.Default, MalformedExpect.MayAccept, ["header_length", "header length", "multiple of 8"],
            b => b.SetU32(OffHeaderLength, 108)),
        new("header-length-exceeds-cluster", MalformedBase.Default, MalformedExpect.RefuseOpen, ["exceeds cluster size", "header_length", "header length"],
            b => b.SetU32(OffHeaderLength, (uint)b.ClusterSize + 8)),
        new("virtual-size-2^63", MalformedBase.Default, MalformedExpect.RefuseOpen, ["too big", "too large"],
            b => b.SetU64(OffSize, 1UL << 63)),
        new("virtual-size-not-a-multiple-of-512", MalformedBase.Default, MalformedExpect.MayAccept, ["size", "multiple of 512"],
            b => b.SetU64(OffSize, (ulong)DefaultSize - 100)),
        new("virtual-size-1TiB-with-1-entry-l1", MalformedBase.Default, MalformedExpect.RefuseOpen, ["L1 table is too small", "L1 table too small"],
            b => b.SetU64(OffSize, 1UL << 40)),
        new("virtual-size-2PiB-with-32MiB-l1", MalformedBase.Default, MalformedExpect.Accept, [], MaxL1),

        // L1 table.
        new("l1-size-0xffffffff", MalformedBase.Default, MalformedExpect.RefuseOpen, ["L1 table too large", "L1 table is too large"],
            b => b.SetU32(OffL1Size, 0xFFFFFFFF)),
        new("l1-size-over-32MiB", MalformedBase.Default, MalformedExpect.RefuseOpen, ["L1 table too large", "L1 table is too large"],
            b => b.SetU32(OffL1Size, (32 << 20) / 8 + 1)),
        new("l1-size-times-8-overflows-int", MalformedBase.Default, MalformedExpect.RefuseOpen, ["L1 table too large", "L1 table is too large"],
            b => b.SetU32(OffL1Size, 0x2000_0000)),
        new("l1-size-smaller-than-virtual-size", MalformedBase.Default, MalformedExpect.RefuseOpen, ["L1 table is too small", "L1 table too small"],
            b => b.SetU32(OffL1Size, 0)),
        new("l1-offset-misaligned", MalformedBase.Default, MalformedExpect.RefuseOpen, ["L1 table offset"],
            b => b.SetU64(OffL1Offset, (ulong)b.L1Offset + 8)),
        new("l1-offset-past-eof", MalformedBase.Default, MalformedExpect.MayAccept, ["L1 table"],
            b => b.SetU64(OffL1Offset, 1UL << 30)),
        new("l1-offset-2^62", MalformedBase.Default, MalformedExpect.MayAccept, ["L1 table"],
            b => b.SetU64(OffL1Offset, 1UL << 62)),
        new("l1-offset-0-overlaps-header", MalformedBase.Default, MalformedExpect.MayAccept, ["L1 table"],
            b => b.SetU64(OffL1Offset, 0)),
        new("l1-overlaps-refcount-table", MalformedBase.Default, MalformedExpect.MayAccept, Overlap,
            b => b.SetU64(OffL1Offset, (ulong)b.RefTableOffset)),
        new("l1-entry-reserved-bits", MalformedBase.Default, MalformedExpect.MayAccept, ["reserved"],
            b => b.SetL1Entry(0, b.L1Entry(0) | (1UL << 56) | 1)),
        new("l1-entry-misaligned-l2", MalformedBase.Default, MalformedExpect.RefuseRead, ["L2 table offset"],
            b => b.SetL1Entry(0, b.L1Entry(0) + 0x200)),
        new("l1-entry-l2-far-past-eof", MalformedBase.Default, MalformedExpect.MayAccept, ["past the end", "beyond the end", "out of range", "L2 table"],
            b => b.SetL1Entry(0, Copied | 0x00F0_0000_0000_0000UL)),
        new("l1-entry-copied-flag-missing", MalformedBase.Default, MalformedExpect.MayAccept, ["copied", "refcount"],
            b => b.SetL1Entry(0, b.L1Entry(0) & ~Copied)),
        new("l2-table-is-the-l1-table", MalformedBase.Default, MalformedExpect.MayAccept, Overlap,
            b => b.SetL1Entry(0, Copied | (ulong)b.L1Offset)),

        // L2 entries.
        new("l2-entry-misaligned", MalformedBase.Default, MalformedExpect.RefuseRead, ["Cluster allocation offset", "unaligned", "misaligned", "not aligned"],
            b => b.SetL2Entry(0, b.L2Entry(0) + 0x200)),
        new("l2-entry-reserved-bits", MalformedBase.Default, MalformedExpect.MayAccept, ["reserved"],
            b => b.SetL2Entry(0, b.L2Entry(0) | (1UL << 56) | 2)),
        new("l2-entry-data-far-past-eof", MalformedBase.Default, MalformedExpect.MayAccept, ["past the end", "beyond the end", "out of range"],
            b => b.SetL2Entry(MiB, Copied | 0x00F0_0000_0000_0000UL)),
        new("l2-entry-data-is-the-l1-table", MalformedBase.Default, MalformedExpect.MayAccept, Overlap,
            b => b.SetL2Entry(MiB, Copied | (ulong)b.L1Offset)),
        new("l2-entry-data-is-a-refcount-block", MalformedBase.Default, MalformedExpect.MayAccept, Overlap,
            b => b.SetL2Entry(MiB, Copied | (b.RefTableEntry(0) & ~0x1FFUL))),
        new("l2-entry-data-is-the-refcount-table", MalformedBase.Default, MalformedExpect.MayAccept, Overlap,
            b => b.SetL2Entry(MiB, Copied | (ulong)b.RefTableOffset)),
        new("v2-l2-entry-with-zero-flag", MalformedBase.V2, MalformedExpect.MayAccept, ["zero", "reserved"],
            b => b.SetL2Entry(MiB, b.L2Entry(MiB) | 1)),
        new("extended-l2-subcluster-allocated-and-zero", MalformedBase.ExtendedL2, MalformedExpect.RefuseRead, ["subcluster", "bitmap"],
            b => b.SetL2Bitmap(0, b.L2Bitmap(0) | (1UL << 32))),
        new("extended-l2-compressed-cluster-with-bitmap", MalformedBase.ExtendedL2, MalformedExpect.RefuseRead, ["subcluster", "bitmap"],
            b =>
            {
                b.CompressCluster(0);
                b.SetL2Bitmap(0, 1);
            }),
        new("extended-l2-unallocated-cluster-with-allocated-subclusters", MalformedBase.ExtendedL2, MalformedExpect.RefuseRead, ["subcluster", "bitmap"],
            b => b.SetL2Bitmap(3 * MiB, 1)),

        // Compressed clusters.
        new("compressed-descriptor-past-eof", MalformedBase.Compressed, MalformedExpect.RefuseRead, ["compressed"],
            b => b.SetL2Entry(0, CompressedDescriptor(b.ClusterBits, ((b.Length + 511) & ~511L) + (16 * MiB), 2))),
        new("compressed-descriptor-straddles-eof", MalformedBase.Compressed, MalformedExpect.RefuseRead, ["compressed"],
            b => b.SetL2Entry(0, CompressedDescriptor(b.ClusterBits, b.Length - 200, 8))),
        new("compressed-data-garbage", MalformedBase.Compressed, MalformedExpect.RefuseRead, ["compress"],
            b =>
            {
                long host = (long)(b.L2Entry(0) & ((1UL << b.CompressedShift) - 1));
                var junk = new byte[4096];
                new Random(42).NextBytes(junk);
                b.Write(host, junk);
            }),
        new("compressed-descriptor-in-header", MalformedBase.Compressed, MalformedExpect.RefuseRead, ["compress"],
            b => b.SetL2Entry(0, CompressedDescriptor(b.ClusterBits, 16, 2))),
        new("compressed-descriptor-max-sectors-spanning-own-clusters", MalformedBase.Default, MalformedExpect.Accept, [],
            b =>
            {
                // The last data cluster compressed; the descriptor's 256 sectors cover it and one more cluster,
                // which is allocated for it (refcount 1, referenced only by this span): odd but consistent.
                long guest = (2 * MiB) + 4096;
                var (host, _) = b.CompressCluster(guest);
                long spill = b.AppendClusters(1);
                Assert.Equal(host + b.ClusterSize, spill);
                b.SetL2Entry(guest, CompressedDescriptor(b.ClusterBits, host, 1L << (b.ClusterBits - 8)));
            }),
        new("compressed-descriptor-max-sectors-overlapping-data-cluster", MalformedBase.Compressed, MalformedExpect.MayAccept, ["compress", "overlap"],
            b =>
            {
                // 256 sectors from guest cluster 0's compressed data run into the next host cluster, which holds
                // guest cluster 16's data: the span overlaps a data cluster.
                long host = (long)(b.L2Entry(0) & ((1UL << b.CompressedShift) - 1));
                Assert.Equal(host + b.ClusterSize, b.DataCluster(MiB));
                b.SetL2Entry(0, CompressedDescriptor(b.ClusterBits, host, 1L << (b.ClusterBits - 8)));
            }),

        // Refcount table and blocks.
        new("refcount-table-offset-misaligned", MalformedBase.Default, MalformedExpect.RefuseOpen, ["count table offset"],
            b => b.SetU64(OffRefTableOffset, (ulong)b.RefTableOffset + 512)),
        new("refcount-table-offset-past-eof", MalformedBase.Default, MalformedExpect.MayAccept, ["count table"],
            b => b.SetU64(OffRefTableOffset, 1UL << 30)),
        new("refcount-table-offset-0", MalformedBase.Default, MalformedExpect.MayAccept, ["count table"],
            b => b.SetU64(OffRefTableOffset, 0)),
        new("refcount-table-clusters-0xffffffff", MalformedBase.Default, MalformedExpect.RefuseOpen, ["count table too large"],
            b => b.SetU32(OffRefTableClusters, 0xFFFFFFFF)),
        new("refcount-table-clusters-over-8MiB", MalformedBase.Default, MalformedExpect.RefuseOpen, ["count table too large"],
            b => b.SetU32(OffRefTableClusters, (8 << 20) / 65536 + 1)),
        new("refcount-table-clusters-0", MalformedBase.Default, MalformedExpect.RefuseOpen, ["reference count table", "refcount table"],
            b => b.SetU32(OffRefTableClusters, 0)),
        new("refcount-table-at-8MiB-limit", MalformedBase.Default, MalformedExpect.Accept, [], MaxRefTable),
        new("refcount-table-entry-0-refblock-at-header", MalformedBase.Default, MalformedExpect.MayAccept, ["offset 0", "refcount block", "refblock"],
            b => b.SetRefTableEntry(0, 0)),
        new("refcount-table-entry-points-into-refcount-table", MalformedBase.Default, MalformedExpect.MayAccept, ["overlap", "metadata", "refcount block", "refblock", "offset 0"],
            b => b.SetRefTableEntry(0, (ulong)b.RefTableOffset)),
        new("refcount-table-entry-points-at-l1", MalformedBase.Default, MalformedExpect.MayAccept, ["overlap", "metadata", "refcount block", "refblock"],
            b => b.SetRefTableEntry(0, (ulong)b.L1Offset)),
        new("refcount-table-entry-misaligned", MalformedBase.Default, MalformedExpect.MayAccept, ["unaligned", "misaligned", "not aligned"],
            b => b.SetRefTableEntry(0, b.RefTableEntry(0) + 0x200)),
        new("refcount-table-entry-reserved-bits", MalformedBase.Default, MalformedExpect.MayAccept, ["reserved"],
            b => b.SetRefTableEntry(0, b.RefTableEntry(0) | 1)),
        new("refcount-table-entry-bit-63", MalformedBase.Default, MalformedExpect.MayAccept, ["refcount block", "refblock", "out of range", "past the end", "reserved"],
            b => b.SetRefTableEntry(0, b.RefTableEntry(0) | (1UL << 63))),
        new("refcount-table-entry-past-eof", MalformedBase.Default, MalformedExpect.MayAccept, ["past the end", "beyond the end", "refcount block", "refblock", "offset 0"],
            b => b.SetRefTableEntry(0, 1UL << 30)),
        new("refcount-order-7", MalformedBase.Default, MalformedExpect.RefuseOpen, ["entry width too large", "refcount_order", "refcount order"],
            b => b.SetU32(OffRefcountOrder, 7)),

        // Header extensions and the backing file name.
        new("extension-length-0xfffffff8", MalformedBase.Default, MalformedExpect.RefuseOpen, ["extension"],
            b => b.WriteRawExtensionHeader(b.HeaderLength, 0x12345678, 0xFFFFFFF8)),
        new("extension-length-past-cluster", MalformedBase.Default, MalformedExpect.RefuseOpen, ["extension"],
            b => b.WriteRawExtensionHeader(b.HeaderLength, ExtFeatureTable, (uint)(b.ClusterSize - b.HeaderLength))),
        new("many-empty-unknown-extensions", MalformedBase.Default, MalformedExpect.MayAccept, ["extension"],
            b => b.WriteExtensions(Enumerable.Repeat((0x12345678u, Array.Empty<byte>()), ((b.ClusterSize - b.HeaderLength) / 8) - 1))),
        new("backing-format-16-bytes", MalformedBase.Default, MalformedExpect.RefuseOpen, ["backing format", "backing_format", "ext_backing_format"],
            b =>
            {
                long end = b.WriteExtensions([(ExtBackingFormat, Encoding.ASCII.GetBytes("qcow2qcow2qcow2q")), .. b.ReadExtensions()]);
                b.SetBackingName(end, 10, "base.qcow2"u8);
            }),
        new("backing-name-1024-bytes", MalformedBase.Default, MalformedExpect.RefuseOpen, ["backing file name too long"],
            b =>
            {
                long end = b.WriteExtensions(b.ReadExtensions());
                b.SetBackingName(end, 1024, Encoding.ASCII.GetBytes(new string('b', 1024)));
            }),
        new("backing-name-past-cluster", MalformedBase.Default, MalformedExpect.RefuseOpen, ["backing file name"],
            b => b.SetBackingName(b.ClusterSize - 10, 100, "base.qcow2"u8)),
        new("backing-name-offset-2^63", MalformedBase.Default, MalformedExpect.RefuseOpen, ["backing file name"],
            b => b.SetBackingName(long.MinValue, 10, default)),

        // Feature bits.
        new("unknown-incompatible-bit-5", MalformedBase.Default, MalformedExpect.RefuseOpen, ["Unknown incompatible feature: 20"],
            b => b.SetU64(OffIncompat, Incompat(b) | (1UL << 5))),
        new("unknown-incompatible-bit-5-named-in-feature-table", MalformedBase.Default, MalformedExpect.RefuseOpen, ["frobnicator", "Unknown incompatible feature: 20"],
            b =>
            {
                var exts = b.ReadExtensions();
                int i = exts.FindIndex(e => e.Type == ExtFeatureTable);
                exts[i] = (ExtFeatureTable, [.. exts[i].Data, .. FeatureTableEntry(0, 5, "frobnicator")]);
                b.WriteExtensions(exts);
                b.SetU64(OffIncompat, Incompat(b) | (1UL << 5));
            }),
        new("unknown-incompatible-bit-63", MalformedBase.Default, MalformedExpect.RefuseOpen, ["Unknown incompatible feature: 8000000000000000"],
            b => b.SetU64(OffIncompat, Incompat(b) | (1UL << 63))),
        new("unknown-compatible-bit", MalformedBase.Default, MalformedExpect.Accept, [],
            b => b.SetU64(OffCompat, b.U64(OffCompat) | (1UL << 7))),
        new("unknown-autoclear-bit", MalformedBase.Default, MalformedExpect.Accept, [],
            b => b.SetU64(OffAutoclear, b.U64(OffAutoclear) | (1UL << 9))),
        new("crypt-method-1-aes", MalformedBase.Default, MalformedExpect.RefuseOpen, ["encrypt"],
            b => b.SetU32(OffCryptMethod, 1)),
        new("crypt-method-2-luks", MalformedBase.Default, MalformedExpect.RefuseOpen, ["encrypt"],
            b => b.SetU32(OffCryptMethod, 2)),
        new("crypt-method-3-unknown", MalformedBase.Default, MalformedExpect.RefuseOpen, ["encrypt"],
            b => b.SetU32(OffCryptMethod, 3)),
        new("external-data-file-bit", MalformedBase.Default, MalformedExpect.RefuseOpen, ["external data file"],
            b => b.SetU64(OffIncompat, Incompat(b) | (1UL << 2))),
        new("external-data-file-bit-and-name", MalformedBase.Default, MalformedExpect.RefuseOpen, ["external data file"],
            b =>
            {
                b.WriteExtensions([(ExtDataFile, "data.raw"u8.ToArray()), .. b.ReadExtensions()]);
                b.SetU64(OffIncompat, Incompat(b) | (1UL << 2));
            }),
        new("corrupt-bit", MalformedBase.Default, MalformedExpect.RefuseRwOpen, ["Image is corrupt; cannot be opened read/write"],
            b => b.SetU64(OffIncompat, Incompat(b) | (1UL << 1))),
        new("dirty-bit-with-lazy-refcounts", MalformedBase.Default, MalformedExpect.MayAccept, ["dirty", "repair", "refcount"],
            b =>
            {
                b.SetU64(OffCompat, b.U64(OffCompat) | 1);
                b.SetU64(OffIncompat, Incompat(b) | 1);
            }),
        new("extended-l2-with-4KiB-clusters", MalformedBase.Cluster4K, MalformedExpect.RefuseOpen, ["extended l2"],
            b => b.SetU64(OffIncompat, Incompat(b) | (1UL << 4))),
        new("compression-type-bit-with-zlib", MalformedBase.Default, MalformedExpect.RefuseOpen, ["compression type", "compression_type"],
            b => b.SetU64(OffIncompat, Incompat(b) | (1UL << 3))),
        new("compression-type-zstd-without-bit", MalformedBase.Default, MalformedExpect.RefuseOpen, ["compression type", "compression_type"],
            b => b.SetU8(OffCompressionType, 1)),
        new("compression-type-2", MalformedBase.Default, MalformedExpect.RefuseOpen, ["compression type", "compression_type"],
            b =>
            {
                b.SetU64(OffIncompat, Incompat(b) | (1UL << 3));
                b.SetU8(OffCompressionType, 2);
            }),

        // Snapshots.
        new("snapshot-count-65537", MalformedBase.Default, MalformedExpect.RefuseOpen, ["snapshot"],
            b =>
            {
                b.SetU32(OffNbSnapshots, 65537);
                b.SetU64(OffSnapshotsOffset, (ulong)b.AppendClusters(1));
            }),
        new("snapshot-table-offset-misaligned", MalformedBase.Default, MalformedExpect.RefuseOpen, ["snapshot table"],
            b =>
            {
                b.SetU32(OffNbSnapshots, 1);
                b.SetU64(OffSnapshotsOffset, (ulong)b.AppendClusters(1) + 8);
            }),
        new("snapshot-table-offset-past-eof", MalformedBase.Default, MalformedExpect.MayAccept, ["snapshot"],
            b =>
            {
                b.SetU32(OffNbSnapshots, 1);
                b.SetU64(OffSnapshotsOffset, 1UL << 30);
            }),
        new("snapshot-extra-data-1MiB", MalformedBase.Default, MalformedExpect.MayAccept, ["snapshot"],
            b =>
            {
                long t = b.AppendClusters(1);
                b.Write(t, SnapshotEntry((ulong)b.L1Offset, 1, "1", "snap", 1 << 20, []));
                b.SetU32(OffNbSnapshots, 1);
                b.SetU64(OffSnapshotsOffset, (ulong)t);
            }),
        new("snapshot-l1-size-0x10000000", MalformedBase.Default, MalformedExpect.MayAccept, ["snapshot"],
            b =>
            {
                long t = b.AppendClusters(1);
                var extra = new byte[24];
                System.Buffers.Binary.BinaryPrimitives.WriteInt64BigEndian(extra.AsSpan(8), DefaultSize);
                b.Write(t, SnapshotEntry((ulong)b.L1Offset, 0x1000_0000, "1", "snap", 24, extra));
                b.SetU32(OffNbSnapshots, 1);
                b.SetU64(OffSnapshotsOffset, (ulong)t);
            }),

        // Bitmaps extension.
        new("bitmaps-extension-length-16", MalformedBase.Default, MalformedExpect.RefuseOpen, ["bitmap"],
            b =>
            {
                b.WriteExtensions([.. b.ReadExtensions(), (ExtBitmaps, new byte[16])]);
                b.SetU64(OffAutoclear, b.U64(OffAutoclear) | 1);
            }),
        new("bitmaps-count-65536", MalformedBase.Default, MalformedExpect.RefuseOpen, ["bitmap"],
            b =>
            {
                long dir = b.AppendClusters(1);
                b.WriteExtensions([.. b.ReadExtensions(), (ExtBitmaps, BitmapsExtension(65536, 64, (ulong)dir))]);
                b.SetU64(OffAutoclear, b.U64(OffAutoclear) | 1);
            }),
        new("bitmaps-directory-misaligned", MalformedBase.Default, MalformedExpect.RefuseOpen, ["bitmap"],
            b =>
            {
                long dir = b.AppendClusters(1);
                b.WriteExtensions([.. b.ReadExtensions(), (ExtBitmaps, BitmapsExtension(1, 64, (ulong)dir + 8))]);
                b.SetU64(OffAutoclear, b.U64(OffAutoclear) | 1);
            }),
        new("bitmaps-directory-garbage", MalformedBase.Default, MalformedExpect.MayAccept, ["bitmap"],
            b =>
            {
                long dir = b.AppendClusters(1);
                b.Fill(dir, 64, 0xFF);
                b.WriteExtensions([.. b.ReadExtensions(), (ExtBitmaps, BitmapsExtension(1, 64, (ulong)dir))]);
                b.SetU64(OffAutoclear, b.U64(OffAutoclear) | 1);
            }),
    ];

    /// <summary>A valid 2 PiB image whose L1 table is at QEMU's 32 MiB limit (4 Mi entries, sparse).</summary>
    private static void MaxL1(MalformedImageBuilder b)
    {
        const int entries = (32 << 20) / 8;
        long oldL1 = b.L1Offset;
        ulong e0 = b.L1Entry(0);
        long l1 = b.AppendClusters((32 << 20) / b.ClusterSize);
        b.SetU64(l1, e0);
        b.SetU64(OffL1Offset, (ulong)l1);
        b.SetU32(OffL1Size, entries);
        b.SetU64(OffSize, (ulong)entries * (ulong)(b.ClusterSize / 8) * (ulong)b.ClusterSize);
        b.SetRefcount(oldL1 / b.ClusterSize, 0);
    }

    /// <summary>A valid image whose refcount table is at QEMU's 8 MiB limit.</summary>
    private static void MaxRefTable(MalformedImageBuilder b)
    {
        int clusters = (8 << 20) / b.ClusterSize;
        long oldRt = b.RefTableOffset;
        ulong e0 = b.RefTableEntry(0);
        long rt = b.AppendClusters(clusters);
        b.SetU64(rt, e0);
        b.SetU64(OffRefTableOffset, (ulong)rt);
        b.SetU32(OffRefTableClusters, (uint)clusters);
        b.SetRefcount(oldRt / b.ClusterSize, 0);
    }

    public static TheoryData<string> Cases()
    {
        var d = new TheoryData<string>();
        foreach (var c in All)
            d.Add(c.Name);
        return d;
    }

    [Fact]
    public void CorpusHasAtLeastThirtyDistinctMalformedCases()
    {
        Assert.Equal(All.Length, All.Select(c => c.Name).Distinct().Count());
        Assert.True(All.Count(c => c.Patch != null && c.Expect != MalformedExpect.Accept) >= 30);
    }

    /// <summary>Backing chains that loop (an image naming itself, or two naming each other) are refused, not followed forever.</summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public async Task BackingChainLoopIsRefused(int imagesInLoop)
    {
        using var dir = new TempDir("malformed");
        string[] names = Enumerable.Range(0, imagesInLoop).Select(i => $"loop{i}.qcow2").ToArray();
        for (int i = 0; i < imagesInLoop; i++)
        {
            var o = new Qcow2CreateOptions { Size = DefaultSize, BackingFile = names[(i + 1) % imagesInLoop], BackingFormat = "qcow2" };
            await (await Qcow2Creator.CreateAsync(FileStorage.Create(dir.Combine(names[i]), FileStorageOptions.Default), o)).DisposeAsync();
        }
        var qinfo = await QemuImg.RunAsync("info", "--backing-chain", "-f", "qcow2", dir.Combine(names[0]));
        output.WriteLine($"qemu-img info --backing-chain: {qinfo.Summary}");

        var s = await RunSessionAsync(async o =>
        {
            o.Stage = "open";
            var img = await ImageOpener.OpenAsync(dir.Combine(names[0]), new ImageOpenOptions { Format = "qcow2", ReadOnly = true });
            await img.DisposeAsync();
        });
        output.WriteLine($"strata: {s.Describe()}");
        Assert.False(s.TimedOut, "opening a looping backing chain hangs");
        Assert.True(s.Allocated < MaxAllocatedBytes, $"allocated {s.Allocated / MiB} MiB");
        var (_, e) = Assert.Single(s.Errors);
        Assert.IsAssignableFrom<ImageException>(e);
        Assert.Contains("loop", e.Message, StringComparison.OrdinalIgnoreCase);
        Assert.Contains(names[0], e.Message, StringComparison.Ordinal);
    }

    // ---------------------------------------------------------------------------------------------
    // The run
    // ---------------------------------------------------------------------------------------------

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task MalformedImageIsRefusedOrHandled(string name)
    {
        var c = All.Single(x => x.Name == name);
        using var dir = new TempDir("malformed");
        string original = dir.Combine(name + ".qcow2");
        using (var b = await MalformedImageBuilder.CreateAsync(original, c.Base))
            c.Patch?.Invoke(b);

        var failures = new List<string>();
        var log = new StringBuilder();
        void Fail(string s) => failures.Add(s);

        // ---- QEMU's view -------------------------------------------------------------------------
        bool qemu = QemuImg.Available;
        QemuImg.Result? qInfo = null;
        long? qSize = null;
        byte[]? qSample = null;
        string qRead = "not run";
        if (qemu)
        {
            (qInfo, qSize) = await QemuImg.InfoAsync(original);
            if (qSize is long qs)
            {
                (qSample, qRead) = await QemuReadSampleAsync(original, qs, dir.Combine("qemu.raw"));
            }
        }
        log.AppendLine($"[{name}] expect {c.Expect}");
        log.AppendLine($"  qemu-img info: {(qemu ? qInfo!.Summary : "qemu-img not installed")}");
        log.AppendLine($"  qemu read:     {qRead}");

        // ---- read-only session -------------------------------------------------------------------
        string roPath = dir.Combine(name + "-ro.qcow2");
        File.Copy(original, roPath);
        var roBuf = new byte[MaxSample];
        var ro = await RunSessionAsync(o => ReadOnlySessionAsync(o, roPath, roBuf));
        log.AppendLine($"  strata ro:     {ro.Describe()}");
        CheckSession("read-only", ro, roPath, c, Fail);

        // ---- read-write session ------------------------------------------------------------------
        string rwPath = dir.Combine(name + "-rw.qcow2");
        File.Copy(original, rwPath);
        var mapBefore = MapClusters(rwPath);
        long? checkBefore = null;
        if (qemu && qInfo!.Ok)
        {
            var (chk, n) = await QemuImg.CheckAsync(rwPath);
            checkBefore = n;
            log.AppendLine($"  qemu check:    {(n is long k ? $"{k} corruptions/errors" : chk.Summary)}");
        }
        long lengthBefore = new FileInfo(rwPath).Length;
        var rwBuf = new byte[MaxSample];
        var rwAfter = new byte[MaxSample];
        var rwExpected = new byte[MaxSample];
        var rw = await RunSessionAsync(o => ReadWriteSessionAsync(o, rwPath, rwBuf, rwAfter, rwExpected));
        log.AppendLine($"  strata rw:     {rw.Describe()}");
        CheckSession("read-write", rw, rwPath, c, Fail);

        // ---- expectations ------------------------------------------------------------------------
        switch (c.Expect)
        {
            case MalformedExpect.Accept:
                if (!ro.Completed)
                    Fail($"valid image: the read-only session must work, but it failed in '{ro.FailedStage}'");
                if (!rw.Completed)
                    Fail($"valid image: the read-write session must work, but it failed in '{rw.FailedStage}'");
                break;
            case MalformedExpect.RefuseOpen:
                if (ro.FailedStage != "open")
                    Fail($"must be refused at open (read-only), but {(ro.Completed ? "the session completed" : $"it failed only in '{ro.FailedStage}'")}");
                if (rw.FailedStage != "open")
                    Fail($"must be refused at open (read-write), but {(rw.Completed ? "the session completed" : $"it failed only in '{rw.FailedStage}'")}");
                break;
            case MalformedExpect.RefuseRead:
                if (ro.Completed)
                    Fail("reading this image must fail (read-only), but the whole sample was read");
                if (rw.Completed || rw.FailedStage?.StartsWith("write", StringComparison.Ordinal) == true || rw.FailedStage is "flush" or "close")
                    Fail($"reading this image must fail (read-write), but {(rw.Completed ? "the session completed" : $"it failed only in '{rw.FailedStage}'")}");
                break;
            case MalformedExpect.RefuseRwOpen:
                if (!ro.Completed)
                    Fail($"the read-only session must work, but it failed in '{ro.FailedStage}'");
                if (rw.FailedStage != "open")
                    Fail($"the read-write open must be refused, but {(rw.Completed ? "the session completed" : $"it failed only in '{rw.FailedStage}'")}");
                break;
        }

        // ---- QEMU comparison -----------------------------------------------------------------------
        if (qemu && !qInfo!.Ok && ro.FailedStage != "open")
            Fail($"qemu-img refuses to open this image ({qInfo.Stderr.Trim()}), but Strata's read-only open accepted it");
        if (qemu && qInfo!.Ok && qSample == null && ro.Completed)
            Fail($"qemu-img cannot read this image ({qRead}), but Strata read it without complaint");
        if (ro.Completed && qSample != null)
        {
            if (ro.Size != qSize)
                Fail($"virtual size: Strata {ro.Size}, qemu-img {qSize}");
            else if (Mismatch(roBuf.AsSpan(0, SampleLength(ro.Size)), qSample, ro.Size) is string m)
                Fail($"read-only data differs from qemu-img's: {m}");
        }
        if (ro.Completed && rw.ReadCompleted && ro.Size == rw.Size
            && Mismatch(roBuf.AsSpan(0, SampleLength(ro.Size)), rwBuf.AsSpan(0, SampleLength(rw.Size)), ro.Size) is string m2)
            Fail($"read-write session read different data than the read-only one: {m2}");

        // ---- after a read-write session that got past open (completed or refused later) -------------
        failures.AddRange(rw.Problems);
        if (checkBefore is long cb && rw.FailedStage != "open" && !rw.TimedOut)
        {
            var (chk, n) = await QemuImg.CheckAsync(rwPath);
            log.AppendLine($"  qemu check rw: {(n is long k ? $"{k} corruptions/errors" : chk.Summary)}");
            string how = rw.Completed ? "the writes" : $"the read-write session (refused in '{rw.FailedStage}')";
            if (n == null)
                Fail($"after {how}, qemu-img check fails: {chk.Summary}");
            else if (n > cb)
                Fail($"{how} introduced corruption: qemu-img check reports {n} corruptions/errors after it, {cb} before");
        }
        if (rw.Completed)
        {
            int len = SampleLength(rw.Size);
            var again = new byte[MaxSample];
            var re = await RunSessionAsync(o => ReadOnlySessionAsync(o, rwPath, again));
            log.AppendLine($"  strata reopen: {re.Describe()}");
            if (!re.Completed)
                Fail($"after the read-write session, the image no longer opens/reads: {re.Describe()}");
            else if (Mismatch(again.AsSpan(0, len), rwExpected.AsSpan(0, len), rw.Size) is string m3)
                Fail($"after the read-write session, reopening reads wrong data: {m3}");

            if (qemu && qSample != null && qSize == rw.Size)
            {
                var (after, afterRead) = await QemuReadSampleAsync(rwPath, rw.Size, dir.Combine("qemu-after.raw"));
                log.AppendLine($"  qemu after rw: {afterRead}");
                if (after == null)
                    Fail($"after the read-write session, qemu-img cannot read the image: {afterRead}");
                else if (Mismatch(after, rwExpected.AsSpan(0, len), rw.Size) is string m4)
                    Fail($"after the read-write session, qemu-img reads wrong data: {m4}");
            }


            var mapAfter = MapClusters(rwPath);
            foreach (var (cluster, roles) in mapAfter)
            {
                if (roles.Count < 2)
                    continue;
                var before = mapBefore.GetValueOrDefault(cluster) ?? [];
                var added = roles.Where(r => !before.Contains(r)).ToList();
                if (added.Count > 0)
                    Fail($"the writes made host cluster #{cluster} a {string.Join("+", added)} although it holds {string.Join("+", roles.Except(added))} (overlapping metadata)");
            }

            long growth = new FileInfo(rwPath).Length - lengthBefore;
            if (growth > MaxGrowth)
                Fail($"writing a few KiB grew the file by {growth} bytes (to {new FileInfo(rwPath).Length})");
        }

        string summary = failures.Count == 0 ? "PASS" : "FAIL: " + string.Join(" | ", failures);
        log.AppendLine($"  => {summary}");
        output.WriteLine(log.ToString());
        if (Environment.GetEnvironmentVariable("STRATA_MALFORMED_REPORT") is { Length: > 0 } report)
            await File.AppendAllTextAsync(report, log.ToString());

        Assert.True(failures.Count == 0, $"{name}:\n  " + string.Join("\n  ", failures));
    }

    private static void CheckSession(string what, Session s, string path, MalformedCase c, Action<string> fail)
    {
        if (s.TimedOut)
            fail($"{what}: no answer within {CaseTimeout.TotalSeconds} s (hang) in stage '{s.Stage}'");
        if (s.Allocated > MaxAllocatedBytes)
            fail($"{what}: allocated {s.Allocated / MiB} MiB (limit {MaxAllocatedBytes / MiB} MiB)");
        string file = Path.GetFileName(path);
        foreach (var (stage, e) in s.Errors)
        {
            if (e is not ImageException)
            {
                fail($"{what}: {stage} threw {e.GetType().FullName} (not an ImageException): {e.Message}\n{FirstFrames(e)}");
                continue;
            }
            if (c.Expect == MalformedExpect.Accept)
                continue; // reported by the expectation check
            // The file name contains the case name: it must not count as naming the problem.
            string withoutFile = e.Message.Replace(file, "<file>", StringComparison.Ordinal);
            if (!c.Problem.Any(p => withoutFile.Contains(p, StringComparison.OrdinalIgnoreCase)))
                fail($"{what}: {stage} threw {e.GetType().Name} whose message does not name the problem (expected one of: {string.Join(" / ", c.Problem.Select(p => $"\"{p}\""))}): {e.Message}");
            if (!e.Message.Contains(file, StringComparison.Ordinal))
                fail($"{what}: {stage} threw {e.GetType().Name} whose message does not name the file '{file}': {e.Message}");
        }
    }

    private static string FirstFrames(Exception e) =>
        string.Join("\n", (e.StackTrace ?? "").Split('\n').Where(l => l.Contains("Strata.", StringComparison.Ordinal)).Take(4).Select(l => "      " + l.Trim()));

    // ---------------------------------------------------------------------------------------------
    // Sessions
    // ---------------------------------------------------------------------------------------------

    private sealed class Session
    {
        public volatile string Stage = "start";
        public readonly List<(string Stage, Exception Error)> Errors = [];
        public readonly List<string> Problems = [];
        public bool TimedOut;
        public long Allocated;
        public long Size = -1;
        public bool ReadCompleted;

        public bool Completed => Errors.Count == 0 && !TimedOut;
        public string? FailedStage => TimedOut ? "timeout:" + Stage : Errors.Count > 0 ? Errors[0].Stage : null;

        public string Describe()
        {
            string alloc = $"{Allocated / 1024} KiB allocated";
            if (TimedOut)
                return $"HANG in {Stage} ({alloc})";
            if (Errors.Count == 0)
                return $"ok, size {Size} ({alloc})";
            return string.Join("; ", Errors.Select(e => $"{e.Stage}: {e.Error.GetType().Name}: {e.Error.Message}")) + $" ({alloc})";
        }
    }

    private static async Task<Session> RunSessionAsync(Func<Session, Task> body)
    {
        var s = new Session();
        var task = Task.Run(async () =>
        {
            long before = GC.GetTotalAllocatedBytes(precise: true);
            try
            {
                await body(s);
            }
            catch (Exception e)
            {
                s.Errors.Add((s.Stage, e));
            }
            finally
            {
                s.Allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
            }
        });
        try
        {
            await task.WaitAsync(CaseTimeout);
        }
        catch (TimeoutException)
        {
            s.TimedOut = true;
        }
        return s;
    }

    private static async Task<bool> StepAsync(Session s, string stage, Func<Task> f)
    {
        s.Stage = stage;
        try
        {
            await f();
            return true;
        }
        catch (Exception e)
        {
            s.Errors.Add((stage, e));
            return false;
        }
    }

    private static readonly ImageOpenOptions ReadOnlyOptions = new() { Format = "qcow2", ReadOnly = true, Backing = BackingPolicy.None };

    private static async Task ReadOnlySessionAsync(Session s, string path, byte[] buf)
    {
        IImage? img = null;
        if (!await StepAsync(s, "open", async () => img = await ImageOpener.OpenAsync(path, ReadOnlyOptions)))
            return;
        s.Size = img!.Size;
        s.ReadCompleted = await StepAsync(s, "read", () => ReadSampleAsync(img, buf));
        await StepAsync(s, "close", () => img.DisposeAsync().AsTask());
    }

    private static async Task ReadWriteSessionAsync(Session s, string path, byte[] buf, byte[] after, byte[] expected)
    {
        FileStorage? storage = null;
        Qcow2Image? img = null;
        if (!await StepAsync(s, "open", async () =>
            {
                storage = FileStorage.Open(path, FileStorageOptions.Default);
                img = await Qcow2Image.OpenAsync(storage);
            }))
        {
            if (img == null && storage != null)
                await storage.DisposeAsync();
            return;
        }
        s.Size = img!.Size;
        int len = SampleLength(s.Size);
        bool ok = s.ReadCompleted = await StepAsync(s, "read", () => ReadSampleAsync(img, buf));
        if (ok)
        {
            buf.AsSpan(0, len).CopyTo(expected);
            foreach (var (off, n, seed) in Writes(s.Size))
            {
                var data = new byte[n];
                for (int i = 0; i < n; i++)
                    data[i] = (byte)(seed ^ (i * 7) ^ (i >> 8));
                ok = await StepAsync(s, $"write 0x{off:x}+{n}", () => img.WriteAsync(data, off).AsTask());
                if (!ok)
                    break;
                data.CopyTo(expected.AsSpan(SampleIndex(off, s.Size)));
            }
        }
        if (ok)
        {
            ok = await StepAsync(s, "read after write", () => ReadSampleAsync(img, after));
            if (ok && Mismatch(after.AsSpan(0, len), expected.AsSpan(0, len), s.Size) is string m)
                s.Problems.Add($"read-write: reading back in the same session gives wrong data: {m}");
        }
        if (ok)
            await StepAsync(s, "flush", () => img.FlushAsync().AsTask());
        await StepAsync(s, "close", () => img.DisposeAsync().AsTask());
    }

    // ---------------------------------------------------------------------------------------------
    // Samples: the whole disk up to 4 MiB, else its first 4 MiB and its last 1 MiB.
    // ---------------------------------------------------------------------------------------------

    private static List<(long Offset, int Length)> Regions(long size)
    {
        var r = new List<(long, int)> { (0, (int)Math.Min(size, HeadSample)) };
        if (size > HeadSample)
        {
            long tail = Math.Max(HeadSample, size - TailSample);
            r.Add((tail, (int)(size - tail)));
        }
        return r;
    }

    private static int SampleLength(long size) => Regions(size).Sum(r => r.Length);

    private static int SampleIndex(long guest, long size)
    {
        int idx = 0;
        foreach (var (off, len) in Regions(size))
        {
            if (guest >= off && guest < off + len)
                return idx + (int)(guest - off);
            idx += len;
        }
        throw new ArgumentOutOfRangeException(nameof(guest));
    }

    private static long GuestOffset(int index, long size)
    {
        foreach (var (off, len) in Regions(size))
        {
            if (index < len)
                return off + index;
            index -= len;
        }
        return -1;
    }

    /// <summary>Small writes: into allocated data, an unallocated spot, the last sector, and the start of guest cluster 16 (which some cases alias to metadata).</summary>
    private static List<(long Offset, int Length, byte Seed)> Writes(long size)
    {
        var w = new List<(long, int, byte)>();
        int head = (int)Math.Min(size, HeadSample);
        if (size >= 8192)
            w.Add((4096, 4096, 0x5A));
        if (head >= 4096)
            w.Add(((head / 2) + 512, 1024, 0x3C));
        if (size >= MiB + 16384)
            w.Add((MiB, 4096, 0x96));
        if (size >= 512)
            w.Add((size - 512, 512, 0xC3));
        return w;
    }

    private static async Task ReadSampleAsync(IImage img, byte[] buf)
    {
        int idx = 0;
        foreach (var (off, len) in Regions(img.Size))
        {
            for (int done = 0; done < len;)
            {
                int n = (int)Math.Min(MiB, len - done);
                await img.ReadAsync(buf.AsMemory(idx + done, n), off + done);
                done += n;
            }
            idx += len;
        }
    }

    private static async Task<(byte[]? Data, string Summary)> QemuReadSampleAsync(string path, long size, string scratch)
    {
        var all = new byte[SampleLength(size)];
        int idx = 0;
        foreach (var (off, len) in Regions(size))
        {
            var (r, data) = await QemuImg.ReadAsync(path, off, len, scratch);
            if (data == null)
                return (null, r.Summary);
            data.CopyTo(all, idx);
            idx += len;
        }
        return (all, $"ok, {all.Length} bytes");
    }

    private static string? Mismatch(ReadOnlySpan<byte> actual, ReadOnlySpan<byte> expected, long size)
    {
        if (actual.Length != expected.Length)
            return $"{actual.Length} bytes instead of {expected.Length}";
        int i = FirstDifference(actual, expected);
        if (i < 0)
            return null;
        return $"first difference at guest offset 0x{GuestOffset(i, size):x}: 0x{actual[i]:x2} instead of 0x{expected[i]:x2}";
    }

    private static int FirstDifference(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b)
    {
        int n = a.CommonPrefixLength(b);
        return n == a.Length ? -1 : n;
    }
}
