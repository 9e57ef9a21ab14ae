using Strata.Images.Qcow2;
using Strata.Interop.Tests.Oracle;
using Xunit;

namespace Strata.Interop.Tests.Qcow2;

/// <summary>
/// Strata's qcow2 check against qemu-img check 7.2 on images made by qemu-img and qemu-io: the same counts
/// (corruptions, leaks, check errors, image end offset, allocation statistics) and the same stderr lines.
/// </summary>
public sealed class CheckMatchesQemuImgTests
{
    /// <summary>Image recipes: qemu-img create options and the qemu-io commands that fill the image.</summary>
    public static TheoryData<string, string, string> Images() => new()
    {
        { "fresh", "", "" },
        { "fresh-v2", "compat=0.10", "" },
        { "data", "", "write -P 1 0 128k;write -P 2 1M 64k;write -P 3 5M 1k;write -z 6M 64k;write -P 4 40M 300k" },
        { "data-v2", "compat=0.10", "write -P 1 0 128k;write -P 2 1M 64k;write -P 3 5M 1k" },
        { "prealloc-zero", "", "write -P 1 0 256k;write -z 64k 64k;discard 128k 64k" },
        { "rc1", "refcount_bits=1", "write -P 1 0 128k;write -P 2 3M 64k" },
        { "rc2-512", "cluster_size=512,refcount_bits=2", "write -P 1 0 20k;write -P 2 3M 5k" },
        { "rc8", "refcount_bits=8", "write -P 1 0 128k;write -P 2 3M 64k" },
        { "rc64", "refcount_bits=64", "write -P 1 0 128k;write -P 2 3M 64k" },
        { "cs512", "cluster_size=512", "write -P 1 0 64k;write -P 2 7M 3k;write -P 3 30M 512" },
        { "cs512-rc64", "cluster_size=512,refcount_bits=64", "write -P 1 0 40k;write -P 2 9M 3k" },
        { "cs2M", "cluster_size=2M", "write -P 1 0 3M;write -P 2 20M 4k" },
        { "extl2", "extended_l2=on", "write -P 1 0 64k;write -P 2 68k 4k;write -P 3 1M 2k;write -z 2M 4k" },
        { "extl2-cs2M", "extended_l2=on,cluster_size=2M", "write -P 1 0 64k;write -P 2 5M 4k" },
        { "lazy", "lazy_refcounts=on", "write -P 1 0 128k" },
    };

    [Theory]
    [MemberData(nameof(Images))]
    public async Task CleanImages_SameReportAsQemuImg(string name, string opts, string io)
    {
        using var dir = new TempDir("check");
        string path = MakeImage(dir, name, opts, io, 64L << 20);
        await CheckSupport.AssertSameCheck(path, Qcow2RepairMode.None, "ro");
        var q = CheckSupport.QemuCheck(path);
        Assert.Equal(0, q.ExitCode);
        // Repairing a clean image changes nothing, in either tool.
        foreach (var mode in new[] { Qcow2RepairMode.Leaks, Qcow2RepairMode.All })
        {
            var (theirs, ours) = await CheckSupport.AssertSameCheck(path, mode, mode.ToString());
            CheckSupport.AssertSameBytes(theirs, ours);
        }
    }

    [Fact]
    public async Task CompressedImage_SameReportAsQemuImg()
    {
        using var dir = new TempDir("check");
        string raw = dir.Combine("src.raw"), path = dir.Combine("c.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "raw", raw, "8M").EnsureSuccess();
        QemuTools.QemuIo("-f", "raw", "-c", "write -P 5 0 1M", "-c", "write -P 7 2M 512k", "-c", "write -P 9 6M 4k", raw).EnsureSuccess();
        QemuTools.QemuImg("convert", "-c", "-O", "qcow2", raw, path).EnsureSuccess();
        var r = await CheckSupport.AssertSameCheck(path, Qcow2RepairMode.None, "ro");
        Assert.True(CheckSupport.QemuCheck(r.Ours).CompressedClusters > 0);

        // Compressed into 2 MiB clusters and 512-byte clusters too (the descriptor's bit split changes).
        foreach (var cs in new[] { "512", "2M" })
        {
            string p = dir.Combine($"c{cs}.qcow2");
            QemuTools.QemuImg("convert", "-c", "-O", "qcow2", "-o", $"cluster_size={cs}", raw, p).EnsureSuccess();
            await CheckSupport.AssertSameCheck(p, Qcow2RepairMode.None, "ro");
        }
    }

    [Fact]
    public async Task SnapshotImages_SameReportAsQemuImg()
    {
        using var dir = new TempDir("check");
        string path = MakeImage(dir, "snap", "", "write -P 1 0 192k;write -P 2 2M 64k", 64L << 20);
        QemuTools.QemuImg("snapshot", "-c", "one", path).EnsureSuccess();
        QemuTools.QemuIo("-c", "write -P 3 64k 64k", "-c", "write -P 4 10M 4k", path).EnsureSuccess();
        QemuTools.QemuImg("snapshot", "-c", "two", path).EnsureSuccess();
        QemuTools.QemuImg("snapshot", "-c", "three", path).EnsureSuccess();
        QemuTools.QemuIo("-c", "write -P 5 0 4k", path).EnsureSuccess();
        await CheckSupport.AssertSameCheck(path, Qcow2RepairMode.None, "ro");

        // Deleting a snapshot leaves shared clusters with refcounts above 1 in other places.
        QemuTools.QemuImg("snapshot", "-d", "two", path).EnsureSuccess();
        await CheckSupport.AssertSameCheck(path, Qcow2RepairMode.None, "ro2");
    }

    [Fact]
    public async Task BitmapImage_SameReportAsQemuImg()
    {
        using var dir = new TempDir("check");
        string path = MakeImage(dir, "bm", "", "write -P 1 0 1M", 64L << 20);
        QemuTools.QemuImg("bitmap", "--add", path, "b0").EnsureSuccess();
        QemuTools.QemuImg("bitmap", "--add", "-g", "512k", path, "b1").EnsureSuccess();
        // qemu-io loads the (auto) bitmaps, dirties them and stores them back: bitmap tables and data clusters appear.
        QemuTools.QemuIo("-c", "write -P 2 0 8M", "-c", "write -P 3 40M 1M", path).EnsureSuccess();
        var q = CheckSupport.QemuCheck(path);
        Assert.True(q.ImageEndOffset > 0 && q.ExitCode == 0, q.ToString());
        await CheckSupport.AssertSameCheck(path, Qcow2RepairMode.None, "ro");
    }

    internal static string MakeImage(TempDir dir, string name, string opts, string io, long size)
    {
        QemuTools.RequireTools();
        string path = dir.Combine(name + ".qcow2");
        var args = new List<string> { "create", "-q", "-f", "qcow2" };
        if (opts.Length > 0)
            args.AddRange(["-o", opts]);
        args.AddRange([path, size.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        QemuTools.QemuImg([.. args]).EnsureSuccess();
        if (io.Length > 0)
        {
            var ioArgs = new List<string>();
            foreach (var c in io.Split(';'))
                ioArgs.AddRange(["-c", c]);
            ioArgs.Add(path);
            QemuTools.QemuIo([.. ioArgs]).EnsureSuccess();
        }
        return path;
    }
}
