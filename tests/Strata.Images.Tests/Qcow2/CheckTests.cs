using System.Buffers.Binary;
using System.Diagnostics;
using System.Security.Cryptography;
using Strata.Images.Qcow2;
using Strata.Images.Storage;
using Xunit;

namespace Strata.Images.Tests.Qcow2;

/// <summary>The qcow2 checker on images Strata writes, on images damaged on purpose, and on hostile images.</summary>
public sealed class CheckTests
{
    public static TheoryData<int, int, bool, int> Geometries() => new()
    {
        { 65536, 16, false, 3 },
        { 512, 1, false, 3 },
        { 512, 64, false, 3 },
        { 4096, 8, false, 3 },
        { 65536, 2, true, 3 },
        { 2 << 20, 32, false, 3 },
        { 65536, 16, false, 2 },
    };

    [Theory]
    [MemberData(nameof(Geometries))]
    public async Task StrataWrittenImage_IsClean(int clusterSize, int refcountBits, bool extendedL2, int version)
    {
        using var dir = new TempDir("check");
        string path = dir.Combine("a.qcow2");
        var o = new Qcow2CreateOptions { Size = 64L << 20, ClusterSize = clusterSize, RefcountBits = refcountBits, ExtendedL2 = extendedL2, Version = version };
        await using (var img = await Qcow2Creator.CreateAsync(FileStorage.Create(path, FileStorageOptions.Default), o))
            await WriteSampleAsync(img);

        var r = await CheckAsync(path, Qcow2RepairMode.None);
        Assert.True(r.ExitCode == 0, Describe(r));
        Assert.Empty(r.Messages);
        Assert.Equal((64L << 20) / clusterSize, r.TotalClusters);
        Assert.True(r.AllocatedClusters > 0);
        long len = new FileInfo(path).Length;
        Assert.InRange(r.ImageEndOffset, 1, (len + clusterSize - 1) / clusterSize * clusterSize);
    }

    [Fact]
    public async Task ReadOnlyCheck_NeverWrites()
    {
        using var dir = new TempDir("check");
        string path = await MakeDamagedAsync(dir, (raw, img) => raw.SetRefcount(raw.HostCluster(1 << 20), 0));
        byte[] before = SHA256.HashData(File.ReadAllBytes(path));
        var r = await CheckAsync(path, Qcow2RepairMode.None);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains(r.Messages, m => m.StartsWith("ERROR cluster ", StringComparison.Ordinal));
        Assert.Equal(before, SHA256.HashData(File.ReadAllBytes(path)));
    }

    [Fact]
    public async Task Repair_OnReadOnlyImage_Throws()
    {
        using var dir = new TempDir("check");
        string path = await MakeDamagedAsync(dir, (_, _) => { });
        await using var img = await Qcow2Image.OpenAsync(FileStorage.Open(path, new FileStorageOptions(ReadOnly: true)), new Qcow2OpenOptions { ForCheck = true });
        await Assert.ThrowsAsync<ImageException>(() => Qcow2Check.CheckAsync(img, Qcow2RepairMode.All).AsTask());
    }

    [Theory]
    [InlineData(Qcow2RepairMode.All, "refcount-zero")]
    [InlineData(Qcow2RepairMode.Leaks, "leak")]
    [InlineData(Qcow2RepairMode.All, "copied")]
    [InlineData(Qcow2RepairMode.All, "corrupt-bit")]
    public async Task Repair_LeavesTheOpenImageConsistentAndUsable(Qcow2RepairMode mode, string damage)
    {
        using var dir = new TempDir("check");
        string path = await MakeDamagedAsync(dir, (raw, p) =>
        {
            switch (damage)
            {
                case "refcount-zero": raw.SetRefcount(raw.HostCluster(1 << 20), 0); break;
                case "leak":
                    long c = (new FileInfo(p).Length + raw.ClusterSize - 1) / raw.ClusterSize;
                    using (var f = File.OpenWrite(p))
                        f.SetLength((c + 1) * raw.ClusterSize);
                    raw.SetRefcount(c, 1);
                    break;
                case "copied":
                    long e = raw.L2EntryOffset(0);
                    raw.WriteU64(e, raw.ReadU64(e) & ~(1UL << 63));
                    break;
                case "corrupt-bit": raw.WriteU64(72, raw.ReadU64(72) | 2); break;
            }
        });

        await using (var img = await Qcow2Image.OpenAsync(FileStorage.Open(path, FileStorageOptions.Default), new Qcow2OpenOptions { ForCheck = true }))
        {
            var first = await Qcow2Check.CheckAsync(img, mode);
            Assert.Null(first.Failure);
            Assert.True(first.AnythingFixed || damage == "corrupt-bit", Describe(first));
            var second = await Qcow2Check.CheckAsync(img, Qcow2RepairMode.None);
            Assert.True(second.ExitCode == 0, Describe(second));
            Assert.False(img.Header.IsCorrupt);

            // The same image object goes on working: new allocations land where the repaired refcounts say.
            await img.WriteAsync(Pattern(0x5a, 300 * 1024), 7L << 20);
            await img.WriteAsync(Pattern(0x6b, 4096), 0);
            await img.FlushAsync();
            var third = await Qcow2Check.CheckAsync(img, Qcow2RepairMode.None);
            Assert.True(third.ExitCode == 0, Describe(third));
        }

        var final = await CheckAsync(path, Qcow2RepairMode.None);
        Assert.True(final.ExitCode == 0, Describe(final));
        await using (var img = await Qcow2Image.OpenAsync(FileStorage.Open(path, new FileStorageOptions(ReadOnly: true))))
        {
            await AssertReadsAsync(img, 4096, 65536 - 4096, 0x11);
            await AssertReadsAsync(img, 0, 4096, 0x6b);
            await AssertReadsAsync(img, 1 << 20, 65536, 0x22);
            await AssertReadsAsync(img, 7L << 20, 300 * 1024, 0x5a);
        }
    }

    [Fact]
    public async Task RepairAsync_RebuildsRefcountsAndClearsTheDirtyBit()
    {
        using var dir = new TempDir("check");
        string path = await MakeDamagedAsync(dir, (raw, _) =>
        {
            raw.SetRefcount(raw.HostCluster(1 << 20), 0);
            raw.WriteU64(72, raw.ReadU64(72) | 1); // dirty, as after a crash with lazy refcounts
            raw.WriteU64(80, raw.ReadU64(80) | 1);
        });
        // Opening read-write without ForCheck repairs, as QEMU does.
        await using (var img = await Qcow2Image.OpenAsync(FileStorage.Open(path, FileStorageOptions.Default)))
        {
            Assert.False(img.Header.IsDirty);
            await AssertReadsAsync(img, 1 << 20, 65536, 0x22);
        }
        var r = await CheckAsync(path, Qcow2RepairMode.None);
        Assert.True(r.ExitCode == 0, Describe(r));
    }

    [Fact]
    public async Task ManyL1EntriesSharingOneL2Table_CheckStaysFast()
    {
        using var dir = new TempDir("check");
        string path = dir.Combine("shared.qcow2");
        // 512-byte clusters: one L2 table maps 32 KiB, so 16 GiB need 512 Ki L1 entries (4 MiB of L1).
        var o = new Qcow2CreateOptions { Size = 16L << 30, ClusterSize = 512 };
        await using (var img = await Qcow2Creator.CreateAsync(FileStorage.Create(path, FileStorageOptions.Default), o))
            await img.WriteAsync(Pattern(1, 4096), 0);
        var raw = new RawImage(path);
        ulong first = raw.ReadU64(raw.L1Offset);
        var l1 = new byte[raw.L1Size * 8L];
        for (int i = 0; i < raw.L1Size; i++)
            BinaryPrimitives.WriteUInt64BigEndian(l1.AsSpan(i * 8), first);
        using (var f = File.OpenWrite(path))
        {
            f.Seek(raw.L1Offset, SeekOrigin.Begin);
            f.Write(l1);
        }

        var sw = Stopwatch.StartNew();
        var r = await CheckAsync(path, Qcow2RepairMode.None);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(60), $"took {sw.Elapsed}");
        Assert.Null(r.Failure);
        // Every reference past the 16-bit maximum is an overflow: for the L2 table and each of its 8 data clusters.
        long refs = raw.L1Size;
        // ... plus, for each of them, a stored refcount of 1 below the (saturated) references.
        Assert.Equal(9 * (refs - 65535) + 9, r.Corruptions);
        Assert.Equal(Qcow2CheckResult.MaxStoredMessages, r.Messages.Count);
        Assert.True(r.MessagesOmitted > 0);
    }

    [Fact]
    public async Task ManyDistinctMisalignedL2Tables_CheckGivesUpInsteadOfHanging()
    {
        using var dir = new TempDir("check");
        string path = dir.Combine("hostile.qcow2");
        var o = new Qcow2CreateOptions { Size = 64L << 20, ClusterSize = 2 << 20 };
        await using (var img = await Qcow2Creator.CreateAsync(FileStorage.Create(path, FileStorageOptions.Default), o))
            await img.WriteAsync(Pattern(1, 4096), 0);
        var raw = new RawImage(path);
        // 256 Ki L1 entries (one 2 MiB cluster), each naming a different 512-byte-aligned "L2 table" of 2 MiB
        // inside a 64 MiB file: 512 GiB to read were every one checked.
        const int entries = 256 * 1024;
        long l1Offset = 8L << 20, fileLength = 64L << 20;
        var l1 = new byte[entries * 8];
        for (int i = 0; i < entries; i++)
            BinaryPrimitives.WriteUInt64BigEndian(l1.AsSpan(i * 8), (ulong)(((long)(i + 1) * 512) % (fileLength - (4 << 20)) + (2 << 20)) & ~511UL);
        using (var f = File.OpenWrite(path))
        {
            f.SetLength(fileLength);
            f.Seek(l1Offset, SeekOrigin.Begin);
            f.Write(l1);
            var h = new byte[12];
            BinaryPrimitives.WriteUInt32BigEndian(h, entries);
            BinaryPrimitives.WriteUInt64BigEndian(h.AsSpan(4), (ulong)l1Offset);
            f.Seek(36, SeekOrigin.Begin);
            f.Write(h);
        }

        var sw = Stopwatch.StartNew();
        var r = await CheckAsync(path, Qcow2RepairMode.None);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(60), $"took {sw.Elapsed}");
        Assert.Equal("File too large", r.Failure);
        Assert.Equal(1, r.ExitCode);
    }

    [Fact]
    public async Task HugeSparseFile_CheckIsBoundedByWhatIsReferenced()
    {
        using var dir = new TempDir("check");
        string path = await MakeDamagedAsync(dir, (_, p) =>
        {
            using var f = File.OpenWrite(p);
            f.SetLength(256L << 30); // sparse: 4 Mi clusters the refcounts do not cover
        });
        var sw = Stopwatch.StartNew();
        var r = await CheckAsync(path, Qcow2RepairMode.None);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(30), $"took {sw.Elapsed}");
        Assert.True(r.ExitCode == 0, Describe(r));
        Assert.True(r.ImageEndOffset < 16 << 20);
    }

    [Fact]
    public async Task Cancellation_StopsTheCheck()
    {
        using var dir = new TempDir("check");
        string path = await MakeDamagedAsync(dir, (_, _) => { });
        await using var img = await Qcow2Image.OpenAsync(FileStorage.Open(path, new FileStorageOptions(ReadOnly: true)), new Qcow2OpenOptions { ForCheck = true });
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Qcow2Check.CheckAsync(img, Qcow2RepairMode.None, cts.Token).AsTask());
    }

    // ---- helpers -------------------------------------------------------------------------------------

    internal static async Task<Qcow2CheckResult> CheckAsync(string path, Qcow2RepairMode mode)
    {
        var storage = FileStorage.Open(path, new FileStorageOptions(ReadOnly: mode == Qcow2RepairMode.None));
        await using var img = await Qcow2Image.OpenAsync(storage, new Qcow2OpenOptions { ForCheck = true });
        return await Qcow2Check.CheckAsync(img, mode);
    }

    /// <summary>A 64 MiB v3 image with data at 0 (0x11), 1 MiB (0x22) and 5 MiB (0x33), then damaged by <paramref name="damage"/>.</summary>
    private static async Task<string> MakeDamagedAsync(TempDir dir, Action<RawImage, string> damage)
    {
        string path = dir.Combine("img.qcow2");
        await using (var img = await Qcow2Creator.CreateAsync(FileStorage.Create(path, FileStorageOptions.Default), new Qcow2CreateOptions { Size = 64L << 20 }))
        {
            await img.WriteAsync(Pattern(0x11, 128 * 1024), 0);
            await img.WriteAsync(Pattern(0x22, 65536), 1 << 20);
            await img.WriteAsync(Pattern(0x33, 4096), 5 << 20);
        }
        damage(new RawImage(path), path);
        return path;
    }

    private static async Task WriteSampleAsync(Qcow2Image img)
    {
        await img.WriteAsync(Pattern(0x11, 200 * 1024), 0);
        await img.WriteAsync(Pattern(0x22, 4096), 3L << 20);
        await img.WriteAsync(Pattern(0x33, 1000), (9L << 20) + 100);
        await img.WriteZeroesAsync(12L << 20, 1 << 20);
        await img.WriteAsync(Pattern(0x44, 3 << 20), 40L << 20);
        await img.DiscardAsync(41L << 20, 1 << 20);
    }

    private static byte[] Pattern(byte value, int length)
    {
        var b = new byte[length];
        Array.Fill(b, value);
        return b;
    }

    private static async Task AssertReadsAsync(Qcow2Image img, long offset, int length, byte value)
    {
        var buf = new byte[length];
        await img.ReadAsync(buf, offset);
        Assert.True(!buf.AsSpan().ContainsAnyExcept(value), $"data at {offset} changed");
    }

    private static string Describe(Qcow2CheckResult r) =>
        $"corruptions={r.Corruptions} leaks={r.Leaks} errors={r.CheckErrors} fixed={r.CorruptionsFixed}/{r.LeaksFixed} failure={r.Failure}\n" +
        string.Join('\n', r.Messages.Take(20));

    /// <summary>Direct access to a qcow2 file's metadata, to damage it.</summary>
    internal sealed class RawImage(string path)
    {
        private byte[] Header { get; } = ReadAt(path, 0, 104);

        public int ClusterBits => (int)BinaryPrimitives.ReadUInt32BigEndian(Header.AsSpan(20));
        public int ClusterSize => 1 << ClusterBits;
        public int L1Size => (int)BinaryPrimitives.ReadUInt32BigEndian(Header.AsSpan(36));
        public long L1Offset => (long)BinaryPrimitives.ReadUInt64BigEndian(Header.AsSpan(40));
        public long RefTableOffset => (long)BinaryPrimitives.ReadUInt64BigEndian(Header.AsSpan(48));

        public ulong ReadU64(long offset) => BinaryPrimitives.ReadUInt64BigEndian(ReadAt(path, offset, 8));

        public void WriteU64(long offset, ulong value)
        {
            var b = new byte[8];
            BinaryPrimitives.WriteUInt64BigEndian(b, value);
            using var f = File.OpenWrite(path);
            f.Seek(offset, SeekOrigin.Begin);
            f.Write(b);
        }

        public long L2EntryOffset(long guest)
        {
            long cluster = guest >> ClusterBits, perL2 = ClusterSize / 8;
            long l2 = (long)(ReadU64(L1Offset + cluster / perL2 * 8) & 0x00fffffffffffe00UL);
            return l2 + cluster % perL2 * 8;
        }

        public long HostCluster(long guest) => (long)(ReadU64(L2EntryOffset(guest)) & 0x00fffffffffffe00UL) >> ClusterBits;

        /// <summary>16-bit refcounts only (the default images of these tests).</summary>
        public void SetRefcount(long cluster, ushort value)
        {
            long perBlock = ClusterSize / 2;
            long block = (long)(ReadU64(RefTableOffset + cluster / perBlock * 8) & ~0x1ffUL);
            var b = new byte[2];
            BinaryPrimitives.WriteUInt16BigEndian(b, value);
            using var f = File.OpenWrite(path);
            f.Seek(block + cluster % perBlock * 2, SeekOrigin.Begin);
            f.Write(b);
        }

        private static byte[] ReadAt(string p, long offset, int n)
        {
            var b = new byte[n];
            using var f = File.OpenRead(p);
            f.Seek(offset, SeekOrigin.Begin);
            f.ReadExactly(b);
            return b;
        }
    }
}
