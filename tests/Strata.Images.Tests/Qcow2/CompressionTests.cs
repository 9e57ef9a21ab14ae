using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using Strata.Images.Qcow2;
using Xunit;

namespace Strata.Images.Tests.Qcow2;

public sealed class CompressionTests
{
    public enum DataKind { Zeros, Random, Text, Mixed }

    private const int MiB = 1024 * 1024;

    public static TheoryData<CompressionType, int, DataKind> RoundTripCases()
    {
        var data = new TheoryData<CompressionType, int, DataKind>();
        foreach (CompressionType type in new[] { CompressionType.Zlib, CompressionType.Zstd })
        {
            foreach (int size in new[] { 512, 4096, 65536, 2 * MiB })
            {
                foreach (DataKind kind in Enum.GetValues<DataKind>())
                {
                    data.Add(type, size, kind);
                }
            }
        }

        return data;
    }

    public static TheoryData<CompressionType> Types() => new() { CompressionType.Zlib, CompressionType.Zstd };

    // ---------------------------------------------------------------------------------------------
    // Round trips
    // ---------------------------------------------------------------------------------------------

    [Theory]
    [MemberData(nameof(RoundTripCases))]
    public void RoundTripWithQemuSizedDestination(CompressionType type, int clusterSize, DataKind kind)
    {
        byte[] cluster = MakeData(kind, clusterSize, seed: clusterSize ^ (int)kind);
        byte[] dest = new byte[clusterSize - 1];

        int n = Qcow2Compression.Compress(type, cluster, dest);

        if (kind == DataKind.Random)
        {
            Assert.Equal(-1, n); // incompressible: QEMU stores such a cluster uncompressed
            return;
        }

        Assert.InRange(n, 1, clusterSize - 1);
        if (kind == DataKind.Zeros)
        {
            Assert.True(n < 64 + clusterSize / 256, $"{type}: {clusterSize} zero bytes compressed to {n} bytes");
        }

        byte[] back = new byte[clusterSize];
        Qcow2Compression.Decompress(type, dest.AsSpan(0, n), back);
        Assert.True(cluster.AsSpan().SequenceEqual(back), $"{type} round trip of {kind} x {clusterSize} differs");
    }

    [Theory]
    [MemberData(nameof(RoundTripCases))]
    public void DecompressToleratesSectorTailGarbage(CompressionType type, int clusterSize, DataKind kind)
    {
        if (kind == DataKind.Random)
        {
            return; // not compressible, never stored compressed
        }

        byte[] cluster = MakeData(kind, clusterSize, seed: 7 * clusterSize + (int)kind);
        byte[] dest = new byte[clusterSize - 1];
        int n = Qcow2Compression.Compress(type, cluster, dest);
        Assert.True(n > 0);

        // The image only records whole 512-byte sectors, possibly starting mid-sector: pad the stream with
        // random bytes to the next sector boundary, and then some more (a whole extra sector of garbage).
        var rng = new Random(n);
        foreach (int start in new[] { 0, 17, 511 })
        {
            int spanLength = ((start + n + 511) / 512 * 512) - start;
            foreach (int extra in new[] { 0, 512 })
            {
                byte[] span = new byte[spanLength + extra];
                rng.NextBytes(span);
                dest.AsSpan(0, n).CopyTo(span);

                byte[] back = new byte[clusterSize];
                Qcow2Compression.Decompress(type, span, back);
                Assert.True(cluster.AsSpan().SequenceEqual(back));
            }
        }
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void CompressRespectsTheDestinationBoundExactly(CompressionType type)
    {
        foreach (int clusterSize in new[] { 512, 4096, 65536, 2 * MiB })
        {
            byte[] cluster = MakeData(DataKind.Mixed, clusterSize, seed: clusterSize);

            byte[] roomy = new byte[clusterSize - 1];
            int n = Qcow2Compression.Compress(type, cluster, roomy);
            Assert.True(n > 0);

            // Exactly enough room. zstd: same result. zlib: deflate(Z_FINISH) answers Z_OK rather than
            // Z_STREAM_END when the stream fills the buffer exactly, which QEMU counts as "does not fit", and so
            // do we; one spare byte is enough.
            byte[] exact = new byte[n];
            int exactResult = Qcow2Compression.Compress(type, cluster, exact);
            if (type == CompressionType.Zlib)
            {
                Assert.Equal(-1, exactResult);
                exact = new byte[n + 1];
                exactResult = Qcow2Compression.Compress(type, cluster, exact);
            }

            Assert.Equal(n, exactResult);
            Assert.True(roomy.AsSpan(0, n).SequenceEqual(exact.AsSpan(0, n)), $"{type} {clusterSize}: output depends on dest size");

            // A destination far larger than the cluster (zstd takes its single-pass path there): same bytes.
            byte[] huge = new byte[clusterSize * 2 + 1024];
            Assert.Equal(n, Qcow2Compression.Compress(type, cluster, huge));
            Assert.True(roomy.AsSpan(0, n).SequenceEqual(huge.AsSpan(0, n)), $"{type} {clusterSize}: output depends on dest size");

            // One byte short: "does not fit".
            Assert.Equal(-1, Qcow2Compression.Compress(type, cluster, new byte[n - 1]));
            Assert.Equal(-1, Qcow2Compression.Compress(type, cluster, Span<byte>.Empty));
        }
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void CompressIncompressibleDataWithRoomyDestinationStillRoundTrips(CompressionType type)
    {
        byte[] cluster = MakeData(DataKind.Random, 65536, seed: 3);
        byte[] dest = new byte[2 * 65536];
        int n = Qcow2Compression.Compress(type, cluster, dest);
        Assert.True(n >= 65536);
        byte[] back = new byte[65536];
        Qcow2Compression.Decompress(type, dest.AsSpan(0, n), back);
        Assert.Equal(cluster, back);
    }

    // ---------------------------------------------------------------------------------------------
    // Bad input: must throw CorruptImageException, never hang, crash or throw something else
    // ---------------------------------------------------------------------------------------------

    [Theory]
    [MemberData(nameof(Types))]
    public void DecompressTruncatedStreamThrows(CompressionType type)
    {
        byte[] cluster = MakeData(DataKind.Text, 65536, seed: 11);
        byte[] dest = new byte[65535];
        int n = Qcow2Compression.Compress(type, cluster, dest);
        Assert.True(n > 100);

        var ex = Assert.Throws<CorruptImageException>(
            () => Qcow2Compression.Decompress(type, dest.AsSpan(0, n / 2), new byte[65536]));
        Assert.Contains("truncated", ex.Message, StringComparison.OrdinalIgnoreCase);

        Assert.Throws<CorruptImageException>(() => Qcow2Compression.Decompress(type, ReadOnlySpan<byte>.Empty, new byte[65536]));
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void DecompressEveryPrefixEitherSucceedsCorrectlyOrThrowsCorrupt(CompressionType type)
    {
        byte[] cluster = MakeData(DataKind.Mixed, 4096, seed: 5);
        byte[] dest = new byte[4095];
        int n = Qcow2Compression.Compress(type, cluster, dest);
        Assert.True(n > 0);

        byte[] back = new byte[4096];
        for (int len = 0; len < n; len++)
        {
            try
            {
                Qcow2Compression.Decompress(type, dest.AsSpan(0, len), back);
                // Only a prefix that lacks just the stream's final bookkeeping can still fill the cluster.
                Assert.True(len >= n - 8, $"{type}: a {len}-byte prefix of a {n}-byte stream decompressed");
                Assert.Equal(cluster, back);
            }
            catch (CorruptImageException)
            {
            }
        }
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void DecompressGarbageThrowsCorrupt(CompressionType type)
    {
        byte[] back = new byte[65536];

        // Zero-filled span (e.g. a descriptor pointing into a hole).
        Assert.Throws<CorruptImageException>(() => Qcow2Compression.Decompress(type, new byte[1024], back));

        // All-ones span.
        byte[] ones = new byte[1024];
        ones.AsSpan().Fill(0xFF);
        Assert.Throws<CorruptImageException>(() => Qcow2Compression.Decompress(type, ones, back));

        // Random spans of random lengths: any outcome but CorruptImageException is a bug.
        var rng = new Random(1234);
        for (int i = 0; i < 300; i++)
        {
            byte[] junk = new byte[rng.Next(0, 4096)];
            rng.NextBytes(junk);
            if (type == CompressionType.Zstd && junk.Length >= 4 && i % 2 == 0)
            {
                // Give half of them a valid zstd magic so the frame parser is exercised, not just the magic check.
                BinaryPrimitives.WriteUInt32LittleEndian(junk, 0xFD2FB528);
            }

            try
            {
                Qcow2Compression.Decompress(type, junk, back);
            }
            catch (CorruptImageException)
            {
            }
        }
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void DecompressBitFlippedStreamsEitherSucceedOrThrowCorrupt(CompressionType type)
    {
        byte[] cluster = MakeData(DataKind.Text, 65536, seed: 99);
        byte[] dest = new byte[65535];
        int n = Qcow2Compression.Compress(type, cluster, dest);
        Assert.True(n > 0);

        var rng = new Random(4321);
        byte[] back = new byte[65536];
        int corrupt = 0;
        for (int i = 0; i < 400; i++)
        {
            byte[] damaged = dest.AsSpan(0, n).ToArray();
            int flips = 1 + rng.Next(4);
            for (int f = 0; f < flips; f++)
            {
                damaged[rng.Next(n)] ^= (byte)(1 << rng.Next(8));
            }

            try
            {
                Qcow2Compression.Decompress(type, damaged, back);
            }
            catch (CorruptImageException)
            {
                corrupt++;
            }
        }

        Assert.True(corrupt > 0, "no bit flip was ever detected");
    }

    [Fact]
    public void ZstdFrameLongerThanTheClusterIsCorrupt()
    {
        // QEMU insists that the frame which fills the cluster also ends there.
        byte[] twoClusters = MakeData(DataKind.Text, 8192, seed: 1);
        byte[] dest = new byte[8192];
        int n = Qcow2Compression.Compress(CompressionType.Zstd, twoClusters, dest);
        Assert.True(n > 0);

        var ex = Assert.Throws<CorruptImageException>(
            () => Qcow2Compression.Decompress(CompressionType.Zstd, dest.AsSpan(0, n), new byte[4096]));
        Assert.Contains("more than the cluster size", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ZlibStreamLongerThanTheClusterIsAcceptedLikeQemu()
    {
        // qcow2_zlib_decompress accepts Z_BUF_ERROR with a full output buffer, whatever follows.
        byte[] twoClusters = MakeData(DataKind.Text, 8192, seed: 1);
        byte[] dest = new byte[8192];
        int n = Qcow2Compression.Compress(CompressionType.Zlib, twoClusters, dest);
        Assert.True(n > 0);

        byte[] back = new byte[4096];
        Qcow2Compression.Decompress(CompressionType.Zlib, dest.AsSpan(0, n), back);
        Assert.True(twoClusters.AsSpan(0, 4096).SequenceEqual(back));
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void DecompressStreamShorterThanTheClusterThrows(CompressionType type)
    {
        byte[] half = MakeData(DataKind.Text, 2048, seed: 2);
        byte[] dest = new byte[4096];
        int n = Qcow2Compression.Compress(type, half, dest);
        Assert.True(n > 0);

        byte[] span = new byte[n + 100]; // zero tail: not a valid continuation either
        dest.AsSpan(0, n).CopyTo(span);
        Assert.Throws<CorruptImageException>(() => Qcow2Compression.Decompress(type, span, new byte[4096]));
    }

    [Fact]
    public void ZstdSeveralFramesFillingOneClusterAreAccepted()
    {
        // qcow2_zstd_decompress keeps decoding frame after frame until the cluster is full.
        byte[] cluster = MakeData(DataKind.Text, 8192, seed: 8);
        byte[] a = new byte[8192];
        byte[] b = new byte[8192];
        int na = Qcow2Compression.Compress(CompressionType.Zstd, cluster.AsSpan(0, 4096), a);
        int nb = Qcow2Compression.Compress(CompressionType.Zstd, cluster.AsSpan(4096), b);
        byte[] span = [.. a.AsSpan(0, na), .. b.AsSpan(0, nb), 0xDE, 0xAD];

        byte[] back = new byte[8192];
        Qcow2Compression.Decompress(CompressionType.Zstd, span, back);
        Assert.Equal(cluster, back);
    }

    [Fact]
    public void ZstdFrameHasMagicAndNoChecksum()
    {
        byte[] cluster = MakeData(DataKind.Text, 65536, seed: 4);
        byte[] dest = new byte[65535];
        int n = Qcow2Compression.Compress(CompressionType.Zstd, cluster, dest);
        Assert.True(n > 6);
        Assert.Equal(0xFD2FB528u, BinaryPrimitives.ReadUInt32LittleEndian(dest));
        byte descriptor = dest[4];
        Assert.Equal(0, descriptor & 0x04); // Content_Checksum_flag: QEMU leaves ZSTD_c_checksumFlag at 0
        Assert.NotEqual(0, descriptor & 0xC0 | descriptor & 0x20); // content size recorded (FCS field present)
    }

    // ---------------------------------------------------------------------------------------------
    // Argument checks
    // ---------------------------------------------------------------------------------------------

    [Fact]
    public void UnknownTypeThrows()
    {
        Assert.Throws<ArgumentOutOfRangeException>(
            () => Qcow2Compression.Compress((CompressionType)2, new byte[512], new byte[511]));
        Assert.Throws<ArgumentOutOfRangeException>(
            () => Qcow2Compression.Decompress((CompressionType)2, new byte[16], new byte[512]));
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void EmptyClusterThrows(CompressionType type)
    {
        Assert.Throws<ArgumentException>(() => Qcow2Compression.Compress(type, ReadOnlySpan<byte>.Empty, new byte[16]));
        Assert.Throws<ArgumentException>(() => Qcow2Compression.Decompress(type, new byte[16], Span<byte>.Empty));
    }

    // ---------------------------------------------------------------------------------------------
    // Threads, context reuse, allocations
    // ---------------------------------------------------------------------------------------------

    [Theory]
    [MemberData(nameof(Types))]
    public void ReusedContextGivesTheSameBytesAsAFreshOne(CompressionType type)
    {
        byte[] big = MakeData(DataKind.Text, 2 * MiB, seed: 21);
        byte[] small = MakeData(DataKind.Mixed, 4096, seed: 22);

        // Warm this thread's context with a large cluster, then compress a small one.
        byte[] scratch = new byte[2 * MiB];
        Assert.True(Qcow2Compression.Compress(type, big, scratch) > 0);
        byte[] reused = new byte[4095];
        int nReused = Qcow2Compression.Compress(type, small, reused);

        // A brand-new thread has brand-new contexts.
        byte[] fresh = new byte[4095];
        int nFresh = 0;
        var thread = new Thread(() => nFresh = Qcow2Compression.Compress(type, small, fresh));
        thread.Start();
        thread.Join();

        Assert.Equal(nFresh, nReused);
        Assert.True(fresh.AsSpan(0, nFresh).SequenceEqual(reused.AsSpan(0, nReused)));
    }

    [Fact]
    public void ConcurrentUseIsSafeAndDeterministic()
    {
        var inputs = new List<(CompressionType Type, byte[] Data, byte[] Expected)>();
        foreach (CompressionType type in new[] { CompressionType.Zlib, CompressionType.Zstd })
        {
            foreach (int size in new[] { 512, 4096, 65536, 262144 })
            {
                byte[] data = MakeData(DataKind.Mixed, size, seed: size + (int)type);
                byte[] dest = new byte[size - 1];
                int n = Qcow2Compression.Compress(type, data, dest);
                Assert.True(n > 0);
                inputs.Add((type, data, dest.AsSpan(0, n).ToArray()));
            }
        }

        int failures = 0;
        Parallel.For(0, 400, new ParallelOptions { MaxDegreeOfParallelism = 8 }, i =>
        {
            var (type, data, expected) = inputs[i % inputs.Count];
            byte[] dest = new byte[data.Length - 1];
            int n = Qcow2Compression.Compress(type, data, dest);
            byte[] back = new byte[data.Length];
            Qcow2Compression.Decompress(type, expected, back);
            if (n != expected.Length || !dest.AsSpan(0, n).SequenceEqual(expected) || !back.AsSpan().SequenceEqual(data))
            {
                Interlocked.Increment(ref failures);
            }
        });

        Assert.Equal(0, failures);
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void HotPathAllocatesNothingOnTheManagedHeap(CompressionType type)
    {
        byte[] cluster = MakeData(DataKind.Text, 65536, seed: 6);
        byte[] dest = new byte[65535];
        byte[] back = new byte[65536];

        // Warm up (JIT, per-thread contexts).
        int n = Qcow2Compression.Compress(type, cluster, dest);
        Qcow2Compression.Decompress(type, dest.AsSpan(0, n), back);

        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 10; i++)
        {
            n = Qcow2Compression.Compress(type, cluster, dest);
            Qcow2Compression.Decompress(type, dest.AsSpan(0, n), back);
        }

        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal(0, allocated);
    }

    // ---------------------------------------------------------------------------------------------
    // Byte identity with QEMU's zlib parameters via python3's zlib (same system library)
    // ---------------------------------------------------------------------------------------------

    [Theory]
    [InlineData(512)]
    [InlineData(4096)]
    [InlineData(65536)]
    [InlineData(2 * MiB)]
    public void ZlibMatchesPythonCompressobjWithQemuParameters(int clusterSize)
    {
        string python = FindTool("python3", "python3 is required to produce the reference zlib stream "
            + "(zlib.compressobj(-1, zlib.DEFLATED, -12, 9), i.e. QEMU's deflateInit2 parameters)");

        using var dir = new TempDir();
        foreach (DataKind kind in Enum.GetValues<DataKind>())
        {
            byte[] cluster = MakeData(kind, clusterSize, seed: clusterSize + 31 * (int)kind);
            string input = Path.Combine(dir.Path, $"{kind}.bin");
            string output = Path.Combine(dir.Path, $"{kind}.deflate");
            File.WriteAllBytes(input, cluster);

            Run(python, "-c",
                "import sys, zlib\n"
                + "d = open(sys.argv[1], 'rb').read()\n"
                + "c = zlib.compressobj(-1, zlib.DEFLATED, -12, 9)\n"
                + "open(sys.argv[2], 'wb').write(c.compress(d) + c.flush())\n",
                input, output);
            byte[] expected = File.ReadAllBytes(output);

            byte[] dest = new byte[clusterSize * 2 + 1024];
            int n = Qcow2Compression.Compress(CompressionType.Zlib, cluster, dest);
            Assert.Equal(expected.Length, n);
            Assert.True(expected.AsSpan().SequenceEqual(dest.AsSpan(0, n)),
                $"zlib output for {kind} x {clusterSize} differs from python's compressobj(-1, DEFLATED, -12, 9)");
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Byte identity with real QEMU (qemu-img convert -c)
    // ---------------------------------------------------------------------------------------------

    public static TheoryData<CompressionType, int> QemuCases()
    {
        var data = new TheoryData<CompressionType, int>();
        foreach (CompressionType type in new[] { CompressionType.Zlib, CompressionType.Zstd })
        {
            foreach (int size in new[] { 512, 4096, 65536, 2 * MiB })
            {
                data.Add(type, size);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(QemuCases))]
    public void MatchesQemuImgConvertCompressed(CompressionType type, int clusterSize)
    {
        string qemuImg = FindTool("qemu-img", "qemu-img (Debian package qemu-utils) is required to check that "
            + "compressed clusters are byte-identical to QEMU's");

        // Guest clusters: several compressible kinds, one incompressible (stored uncompressed by QEMU) and
        // a final partial cluster (QEMU pads it with zeros to a whole cluster before compressing).
        var clusters = new List<byte[]>
        {
            MakeData(DataKind.Text, clusterSize, seed: 1),
            MakeData(DataKind.Mixed, clusterSize, seed: 2),
            MakeData(DataKind.Random, clusterSize, seed: 3),
            MakeSawtooth(clusterSize),
            MakeData(DataKind.Text, clusterSize, seed: 5),
        };
        byte[] tail = MakeData(DataKind.Text, clusterSize / 2, seed: 6);

        using var dir = new TempDir();
        string raw = Path.Combine(dir.Path, "in.raw");
        string qcow2 = Path.Combine(dir.Path, "out.qcow2");
        using (var f = File.Create(raw))
        {
            foreach (byte[] c in clusters)
            {
                f.Write(c);
            }

            f.Write(tail);
        }

        byte[] paddedTail = new byte[clusterSize];
        tail.CopyTo(paddedTail, 0);
        clusters.Add(paddedTail);

        string options = $"cluster_size={clusterSize}" + (type == CompressionType.Zstd ? ",compression_type=zstd" : "");
        Run(qemuImg, "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o", options, raw, qcow2);

        byte[] image = File.ReadAllBytes(qcow2);
        Assert.Equal(0x514649FBu, BinaryPrimitives.ReadUInt32BigEndian(image)); // "QFI\xfb"
        int clusterBits = (int)BinaryPrimitives.ReadUInt32BigEndian(image.AsSpan(20));
        Assert.Equal(clusterSize, 1 << clusterBits);
        uint version = BinaryPrimitives.ReadUInt32BigEndian(image.AsSpan(4));
        var headerType = CompressionType.Zlib;
        if (version >= 3 && BinaryPrimitives.ReadUInt32BigEndian(image.AsSpan(100)) > 104)
        {
            headerType = (CompressionType)image[104];
        }

        Assert.Equal(type, headerType);

        int compressedSeen = 0;
        for (int g = 0; g < clusters.Count; g++)
        {
            ulong entry = ReadL2Entry(image, clusterBits, g);
            byte[] expected = clusters[g];
            byte[] ours = new byte[clusterSize - 1];
            int n = Qcow2Compression.Compress(type, expected, ours);

            if ((entry & (1UL << 62)) == 0)
            {
                // QEMU stored it uncompressed: it must be because it did not fit, and we must agree.
                Assert.True(entry != 0, $"guest cluster {g} is unallocated");
                Assert.Equal(-1, n);
                continue;
            }

            compressedSeen++;
            int x = 62 - (clusterBits - 8);
            long hostOffset = (long)(entry & ((1UL << x) - 1));
            int sectors = (int)((entry >> x) & ((1UL << (clusterBits - 8)) - 1)) + 1;
            int spanLength = sectors * 512 - (int)(hostOffset & 511);

            // The last compressed cluster's final sector may extend past the end of the file: read zeros there.
            byte[] span = new byte[spanLength];
            int available = (int)Math.Min(spanLength, image.Length - hostOffset);
            image.AsSpan((int)hostOffset, available).CopyTo(span);

            // 1. We read what QEMU wrote.
            byte[] back = new byte[clusterSize];
            Qcow2Compression.Decompress(type, span, back);
            Assert.True(expected.AsSpan().SequenceEqual(back), $"{type}: guest cluster {g} decompressed wrongly");

            // 2. We write what QEMU wrote: same bytes and the same length (QEMU records the length as the
            //    number of 512-byte sectors touched from hostOffset to hostOffset + length - 1).
            Assert.True(n > 0, $"{type}: QEMU compressed guest cluster {g} but we found it incompressible");
            Assert.True(n <= spanLength, $"{type}: guest cluster {g}: our {n} bytes exceed QEMU's {spanLength}-byte span");
            int oursSectors = (int)(((hostOffset + n - 1) >> 9) - (hostOffset >> 9)) + 1;
            Assert.Equal(sectors, oursSectors);
            Assert.True(span.AsSpan(0, n).SequenceEqual(ours.AsSpan(0, n)),
                $"{type}: guest cluster {g} ({clusterSize}-byte clusters): compressed bytes differ from QEMU's "
                + $"(first difference at byte {FirstDifference(span, ours, n)} of {n}; our libz {ZlibNative.RuntimeVersion}, "
                + $"libzstd {ZstdNative.RuntimeVersion}: QEMU must be linked to the same ones)");
        }

        Assert.True(compressedSeen >= 4, $"only {compressedSeen} compressed clusters in QEMU's image");
    }

    private static ulong ReadL2Entry(byte[] image, int clusterBits, int guestCluster)
    {
        const ulong OffsetMask = 0x00FF_FFFF_FFFF_FE00UL;
        int l2Entries = 1 << (clusterBits - 3);
        long l1Offset = (long)BinaryPrimitives.ReadUInt64BigEndian(image.AsSpan(40));
        ulong l1Entry = BinaryPrimitives.ReadUInt64BigEndian(image.AsSpan((int)(l1Offset + 8L * (guestCluster / l2Entries))));
        long l2Offset = (long)(l1Entry & OffsetMask);
        if (l2Offset == 0)
        {
            return 0;
        }

        return BinaryPrimitives.ReadUInt64BigEndian(image.AsSpan((int)(l2Offset + 8L * (guestCluster % l2Entries))));
    }

    private static int FirstDifference(byte[] a, byte[] b, int n)
    {
        for (int i = 0; i < n; i++)
        {
            if (a[i] != b[i])
            {
                return i;
            }
        }

        return -1;
    }

    // ---------------------------------------------------------------------------------------------
    // Helpers
    // ---------------------------------------------------------------------------------------------

    private static readonly string[] Words =
    [
        "the", "qcow2", "cluster", "refcount", "table", "offset", "QEMU", "image", "sector", "guest", "host",
        "snapshot", "bitmap", "header", "extension", "compressed", "zlib", "zstd", "and", "of", "to", "a",
        "data", "write", "read", "allocate", "free", "L1", "L2", "entry", "copied", "flag", "backing", "file",
    ];

    internal static byte[] MakeData(DataKind kind, int size, int seed)
    {
        byte[] data = new byte[size];
        var rng = new Random(seed);
        switch (kind)
        {
            case DataKind.Zeros:
                break;
            case DataKind.Random:
                rng.NextBytes(data);
                break;
            case DataKind.Text:
                FillText(data, rng);
                break;
            case DataKind.Mixed:
                // Text with random runs sprinkled in: compressible, but with literals and short matches.
                FillText(data, rng);
                for (int i = 0; i < size; i += 256)
                {
                    int run = Math.Min(rng.Next(8, 64), size - i);
                    rng.NextBytes(data.AsSpan(i, run));
                }

                break;
        }

        return data;
    }

    private static void FillText(byte[] data, Random rng)
    {
        var sb = new StringBuilder(data.Length + 64);
        int line = 0;
        while (sb.Length < data.Length)
        {
            sb.Append("line ").Append(line++).Append(':');
            int words = rng.Next(4, 14);
            for (int w = 0; w < words; w++)
            {
                sb.Append(' ').Append(Words[rng.Next(Words.Length)]);
            }

            sb.Append(" = 0x").Append(rng.Next().ToString("x8", System.Globalization.CultureInfo.InvariantCulture)).Append('\n');
        }

        Encoding.ASCII.GetBytes(sb.ToString(0, data.Length), data);
    }

    private static byte[] MakeSawtooth(int size)
    {
        byte[] data = new byte[size];
        for (int i = 0; i < size; i++)
        {
            data[i] = (byte)(i % 251 ^ (i >> 12));
        }

        return data;
    }

    private static string FindTool(string name, string why)
    {
        foreach (string dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator))
        {
            if (dir.Length == 0)
            {
                continue;
            }

            string candidate = Path.Combine(dir, name);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        Assert.Fail($"'{name}' was not found on PATH. {why}.");
        return null!;
    }

    private static void Run(string fileName, params string[] args)
    {
        var psi = new ProcessStartInfo(fileName)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }

        using var process = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {fileName}");
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(2)))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{fileName} did not finish within 2 minutes");
        }

        process.WaitForExit();
        Assert.True(process.ExitCode == 0,
            $"{fileName} {string.Join(' ', args)} exited with {process.ExitCode}: {stderr.Result}{stdout.Result}");
    }

    private sealed class TempDir : IDisposable
    {
        public string Path { get; } = Directory.CreateTempSubdirectory("strata-compression-").FullName;

        public void Dispose()
        {
            try
            {
                Directory.Delete(Path, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }
}
