using Strata.Images.Qcow2;
using Strata.Interop.Tests.Oracle;
using Xunit;

namespace Strata.Interop.Tests.Qcow2;

/// <summary>
/// Images corrupted on purpose: Strata's check reports what qemu-img check 7.2 reports (counts and stderr lines),
/// and its repairs (-r leaks, -r all) give the same messages, counts and the very same file as qemu-img's, which
/// qemu-img then finds clean, with the guest data unchanged.
/// </summary>
public sealed class CheckRepairMatchesQemuImgTests
{
    private const string Data = "write -P 1 0 128k;write -P 2 1M 64k;write -P 3 5M 4k;write -P 4 40M 192k";

    /// <summary>Corruptions qemu-img check -r all leaves in place (or, for reserved refcount table bits, fails on).</summary>
    private static readonly HashSet<string> NotRepairable =
    [
        "l2-reserved", "l1-reserved", "extl2-alloc-and-zero", "extl2-unallocated-bitmap", "unaligned-data",
        "l2-past-eof", "reftable-reserved",
    ];

    public static TheoryData<string, string> Scenarios() => new()
    {
        { "refcount-zero", "" },
        { "refcount-zero", "cluster_size=512,refcount_bits=1" },
        { "refcount-zero", "cluster_size=512" },
        { "refcount-zero", "refcount_bits=64" },
        { "refcount-zero", "refcount_bits=2" },
        { "refcount-zero", "cluster_size=2M" },
        { "refcount-zero", "extended_l2=on" },
        { "refcount-zero", "compat=0.10" },
        { "leak", "" },
        { "leak", "cluster_size=512,refcount_bits=1" },
        { "leak", "refcount_bits=64" },
        { "leak-past-eof", "" },
        { "refcount-two", "" },
        { "refcount-two", "refcount_bits=8" },
        { "copied-l2-cleared", "" },
        { "copied-l2-cleared", "extended_l2=on" },
        { "copied-l1-cleared", "" },
        { "l2-reserved", "" },
        { "l1-reserved", "" },
        { "reftable-reserved", "" },
        { "refblock-refcount-zero", "" },
        { "refblock-outside-image", "" },
        { "corrupt-bit", "" },
        { "unaligned-data", "" },
        { "unaligned-prealloc", "" },
        { "unaligned-prealloc", "extended_l2=on" },
        { "l2-past-eof", "" },
        { "extl2-alloc-and-zero", "extended_l2=on" },
        { "extl2-unallocated-bitmap", "extended_l2=on" },
        { "many-leaks", "cluster_size=4096" },
    };

    [Theory]
    [MemberData(nameof(Scenarios))]
    public async Task Corrupted_CheckAndRepairMatchQemuImg(string scenario, string opts)
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("chkfix");
        string path = CheckMatchesQemuImgTests.MakeImage(dir, "img", opts, Data, 64L << 20);
        if (scenario is "unaligned-prealloc" or "extl2-alloc-and-zero")
            QemuTools.QemuIo("-c", "write -z 40M 64k", path).EnsureSuccess(); // keeps the cluster, now reading as zero
        string pristine = dir.Combine("pristine.qcow2");
        File.Copy(path, pristine);
        Corrupt(new RawQcow2(path), path, scenario);
        await AssertCheckAndRepairs(path, pristine, repairable: !NotRepairable.Contains(scenario));
    }

    [Theory]
    [InlineData("")]
    [InlineData("cluster_size=512,refcount_bits=1")]
    [InlineData("extended_l2=on")]
    [InlineData("cluster_size=2M,refcount_bits=64")]
    public async Task LazyRefcountsLeftDirty_CheckAndRepairMatchQemuImg(string opts)
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("chkfix");
        string o = "lazy_refcounts=on" + (opts.Length > 0 ? "," + opts : "");
        string path = CheckMatchesQemuImgTests.MakeImage(dir, "lazy", o, "write -P 1 0 64k", 64L << 20);
        string pristine = dir.Combine("pristine.qcow2");
        // The crash: refcounts of the new clusters never reach the disk; the dirty bit stays set.
        QemuTools.QemuIo("-c", "write -P 7 0 64k", "-c", "write -P 8 3M 64k", "-c", "write -P 9 20M 4k", "-c", "abort", path);
        Assert.Equal(1UL, new RawQcow2(path).Incompatible & 1);
        File.Copy(path, pristine);
        await AssertCheckAndRepairs(path, pristine, repairable: true);
        QemuTools.QemuIo("-c", "read -P 7 0 64k", "-c", "read -P 8 3M 64k", "-c", "read -P 9 20M 4k", path + ".all.strata").EnsureSuccess();
    }

    [Fact]
    public async Task SnapshotImage_SharedClusterRefcountTooLow_MatchesQemuImg()
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("chkfix");
        string path = CheckMatchesQemuImgTests.MakeImage(dir, "snap", "", Data, 64L << 20);
        QemuTools.QemuImg("snapshot", "-c", "s1", path).EnsureSuccess();
        QemuTools.QemuIo("-c", "write -P 9 0 64k", path).EnsureSuccess();
        string pristine = dir.Combine("pristine.qcow2");
        File.Copy(path, pristine);
        var raw = new RawQcow2(path);
        long shared = raw.HostCluster(1 << 20); // still shared with the snapshot: refcount 2
        Assert.Equal(2UL, raw.GetRefcount(shared));
        raw.SetRefcount(shared, 1);
        await AssertCheckAndRepairs(path, pristine, repairable: true);
    }

    [Fact]
    public async Task RebuildWithARefcountTableOfSeveralClusters_MatchesQemuImg()
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("chkfix");
        // 512-byte clusters with 64-bit refcounts: a refcount block covers 64 clusters, a table cluster 64 blocks,
        // so 9 MiB of data need a refcount table of several clusters, which the rebuild must place and grow.
        string path = CheckMatchesQemuImgTests.MakeImage(dir, "big", "cluster_size=512,refcount_bits=64",
            "write -P 1 0 8M;write -P 2 30M 1M", 64L << 20);
        string pristine = dir.Combine("pristine.qcow2");
        File.Copy(path, pristine);
        var raw = new RawQcow2(path);
        raw.SetRefcount(raw.HostCluster(5 << 20), 0);
        await AssertCheckAndRepairs(path, pristine, repairable: true);
    }

    [Fact]
    public async Task CompressedClusterWithCopiedFlag_MatchesQemuImg()
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("chkfix");
        string src = dir.Combine("src.raw"), path = dir.Combine("c.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "raw", src, "8M").EnsureSuccess();
        QemuTools.QemuIo("-f", "raw", "-c", "write -P 5 0 1M", src).EnsureSuccess();
        QemuTools.QemuImg("convert", "-c", "-O", "qcow2", src, path).EnsureSuccess();
        string pristine = dir.Combine("pristine.qcow2");
        File.Copy(path, pristine);
        var raw = new RawQcow2(path);
        long e = raw.L2EntryOffset(0);
        raw.WriteU64(e, raw.ReadU64(e) | (1UL << 63));
        await AssertCheckAndRepairs(path, pristine, repairable: false); // qemu-img reports it but never clears the flag
    }

    [Theory]
    [InlineData("incomplete")]
    [InlineData("extra-too-big")]
    [InlineData("extra-unknown")]
    [InlineData("l1-unaligned")]
    [InlineData("l1-past-eof")]
    public async Task DamagedSnapshotTable_MatchesQemuImg(string damage)
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("chkfix");
        string path = CheckMatchesQemuImgTests.MakeImage(dir, "sn", "", "write -P 1 0 128k", 64L << 20);
        QemuTools.QemuImg("snapshot", "-c", "first", path).EnsureSuccess();
        QemuTools.QemuIo("-c", "write -P 2 0 64k", path).EnsureSuccess();
        QemuTools.QemuImg("snapshot", "-c", "second", path).EnsureSuccess();
        string pristine = dir.Combine("pristine.qcow2");
        File.Copy(path, pristine);
        var raw = new RawQcow2(path);
        switch (damage)
        {
            case "incomplete": raw.RewriteSnapshotEntry(0, 8); break;
            case "extra-too-big": raw.RewriteSnapshotEntry(1, 2000); break;
            case "extra-unknown": raw.RewriteSnapshotEntry(0, 40); break;
            case "l1-unaligned": raw.RewriteSnapshotEntry(1, 24, l1Delta: 512); break;
            case "l1-past-eof": raw.RewriteSnapshotEntry(1, 24, l1Delta: 1L << 40); break;
        }
        await AssertCheckAndRepairs(path, pristine, repairable: damage is not ("l1-unaligned" or "l1-past-eof"));
    }

    [Theory]
    [InlineData("")]
    [InlineData("refcount_bits=1")]
    [InlineData("extended_l2=on")]
    public async Task L2TableReferencedTwice_MatchesQemuImg(string opts)
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("chkfix");
        long size = opts.Contains("extended", StringComparison.Ordinal) ? 2L << 30 : 1L << 30;
        string path = CheckMatchesQemuImgTests.MakeImage(dir, "dup", opts, "write -P 1 0 128k;write -P 2 1M 64k", size);
        string pristine = dir.Combine("pristine.qcow2");
        File.Copy(path, pristine);
        var raw = new RawQcow2(path);
        Assert.True(raw.L1Size >= 2);
        raw.WriteU64(raw.L1EntryOffset(1), raw.ReadU64(raw.L1EntryOffset(0)));
        await AssertCheckAndRepairs(path, pristine, repairable: false);
    }

    [Theory]
    [InlineData("directory")]
    [InlineData("table")]
    [InlineData("data")]
    public async Task BitmapClusterRefcountZero_MatchesQemuImg(string which)
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("chkfix");
        string path = CheckMatchesQemuImgTests.MakeImage(dir, "bm", "", "write -P 1 0 1M", 64L << 20);
        QemuTools.QemuImg("bitmap", "--add", path, "b0").EnsureSuccess();
        QemuTools.QemuIo("-c", "write -P 2 0 8M", path).EnsureSuccess();
        string pristine = dir.Combine("pristine.qcow2");
        File.Copy(path, pristine);
        var raw = new RawQcow2(path);
        var (d, t, data) = raw.FirstBitmap();
        Assert.NotEqual(0, data);
        raw.SetRefcount((which switch { "directory" => d, "table" => t, _ => data }) >> raw.ClusterBits, 0);
        // Not -r leaks: that check fails ("need to rebuild"), and then QEMU writes its bitmaps back at close
        // through the broken refcounts. And not the same bytes: QEMU stores every persistent bitmap anew (new
        // directory, tables and data clusters) whenever it closes an image it opened read-write; that is the
        // image's life cycle, not the check.
        await AssertCheckAndRepairs(path, pristine, repairable: true, sameBytes: false, Qcow2RepairMode.All);
    }

    [Theory]
    [InlineData("")]
    [InlineData("cluster_size=512,refcount_bits=1")]
    public async Task LazyRefcountsLeftDirty_OpenedReadWrite_IsRepairedLikeQemu(string opts)
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("chkfix");
        string o = "lazy_refcounts=on" + (opts.Length > 0 ? "," + opts : "");
        string path = CheckMatchesQemuImgTests.MakeImage(dir, "lazy", o, "write -P 1 0 64k", 64L << 20);
        QemuTools.QemuIo("-c", "write -P 7 0 64k", "-c", "write -P 8 3M 64k", "-c", "abort", path);
        string theirs = dir.Combine("theirs.qcow2"), ours = dir.Combine("ours.qcow2");
        File.Copy(path, theirs);
        File.Copy(path, ours);
        // QEMU repairs a dirty image when it opens it read-write (and closes it clean).
        QemuTools.QemuIo("-c", "read -P 7 0 64k", theirs).EnsureSuccess();
        await using (var img = await Strata.Images.Format.ImageOpener.OpenAsync(ours, new Strata.Images.Format.ImageOpenOptions()))
        {
            var buf = new byte[65536];
            await img.ReadAsync(buf, 3 << 20);
            Assert.False(buf.AsSpan().ContainsAnyExcept((byte)8));
        }
        CheckSupport.AssertSameBytes(theirs, ours);
        Assert.Equal(0, CheckSupport.QemuCheck(ours).ExitCode);
    }

    private static Task AssertCheckAndRepairs(string path, string pristine, bool repairable) =>
        AssertCheckAndRepairs(path, pristine, repairable, sameBytes: true);

    private static async Task AssertCheckAndRepairs(string path, string pristine, bool repairable, bool sameBytes, params Qcow2RepairMode[] modes)
    {
        await CheckSupport.AssertSameCheck(path, Qcow2RepairMode.None, "ro");
        foreach (var mode in modes.Length > 0 ? modes : [Qcow2RepairMode.Leaks, Qcow2RepairMode.All])
        {
            string tag = mode == Qcow2RepairMode.All ? "all" : "leaks";
            var (theirs, ours) = await CheckSupport.AssertSameCheck(path, mode, tag);
            if (sameBytes)
                CheckSupport.AssertSameBytes(theirs, ours);
            var after = CheckSupport.QemuCheck(ours);
            if (mode == Qcow2RepairMode.All && repairable)
            {
                Assert.True(after.ExitCode == 0, $"qemu-img check after strata's -r all: {after}");
                var cmp = QemuTools.QemuImg("compare", "-f", "qcow2", "-F", "qcow2", pristine, ours);
                Assert.True(cmp.ExitCode == 0, cmp.StdOut + cmp.StdErr);
            }
        }
    }

    private static void Corrupt(RawQcow2 raw, string path, string scenario)
    {
        int cs = raw.ClusterSize;
        switch (scenario)
        {
            case "refcount-zero":
                raw.SetRefcount(raw.HostCluster(1 << 20), 0);
                break;
            case "leak":
            {
                long len = new FileInfo(path).Length;
                long cluster = (len + cs - 1) / cs + 1;
                using (var f = File.OpenWrite(path))
                    f.SetLength((cluster + 2) * cs);
                raw.SetRefcount(cluster, 1);
                raw.SetRefcount(cluster + 1, 1);
                break;
            }
            case "leak-past-eof":
            {
                long len = new FileInfo(path).Length;
                raw.SetRefcount((len + cs - 1) / cs + 3, 1);
                break;
            }
            case "many-leaks":
            {
                long len = new FileInfo(path).Length;
                long first = (len + cs - 1) / cs;
                using (var f = File.OpenWrite(path))
                    f.SetLength((first + 300) * cs);
                for (long c = first; c < first + 300; c += 3)
                    raw.SetRefcount(c, 1);
                break;
            }
            case "refcount-two":
                raw.SetRefcount(raw.HostCluster(0), 2);
                break;
            case "copied-l2-cleared":
            {
                long e = raw.L2EntryOffset(5 << 20);
                raw.WriteU64(e, raw.ReadU64(e) & ~(1UL << 63));
                break;
            }
            case "copied-l1-cleared":
                raw.WriteU64(raw.L1EntryOffset(0), raw.ReadU64(raw.L1EntryOffset(0)) & ~(1UL << 63));
                break;
            case "l2-reserved":
            {
                long e = raw.L2EntryOffset(1 << 20);
                raw.WriteU64(e, raw.ReadU64(e) | 2);
                break;
            }
            case "l1-reserved":
                raw.WriteU64(raw.L1EntryOffset(0), raw.ReadU64(raw.L1EntryOffset(0)) | (1UL << 60));
                break;
            case "reftable-reserved":
                raw.WriteU64(raw.RefTableOffset, raw.ReadU64(raw.RefTableOffset) | 1);
                break;
            case "refblock-refcount-zero":
                raw.SetRefcount((long)(raw.ReadU64(raw.RefTableOffset) >> raw.ClusterBits), 0);
                break;
            case "refblock-outside-image":
            {
                long len = new FileInfo(path).Length;
                raw.WriteU64(raw.RefTableOffset + 8, (ulong)((len + cs - 1) / cs + 5) * (ulong)cs);
                break;
            }
            case "corrupt-bit":
                raw.WriteU64(72, raw.ReadU64(72) | 2);
                break;
            case "unaligned-data":
            {
                long e = raw.L2EntryOffset(5 << 20);
                raw.WriteU64(e, raw.ReadU64(e) + 512);
                break;
            }
            case "unaligned-prealloc":
            {
                long e = raw.L2EntryOffset(40 << 20);
                ulong v = raw.ReadU64(e);
                Assert.True(raw.ExtendedL2 || (v & 1) == 1, $"expected a preallocated zero cluster, got {v:x}");
                raw.WriteU64(e, v + 512);
                break;
            }
            case "l2-past-eof":
            {
                long e = raw.L2EntryOffset(5 << 20);
                raw.WriteU64(e, (1UL << 63) | (1UL << 40));
                break;
            }
            case "extl2-alloc-and-zero":
            {
                long e = raw.L2EntryOffset(1 << 20);
                raw.WriteU64(e + 8, raw.ReadU64(e + 8) | 0x0000000300000000UL);
                break;
            }
            case "extl2-unallocated-bitmap":
            {
                long e = raw.L2EntryOffset(3 << 20);
                Assert.Equal(0UL, raw.ReadU64(e));
                raw.WriteU64(e + 8, 0x10);
                break;
            }
            default:
                throw new ArgumentException(scenario);
        }
    }
}
