using Strata.Images;
using Strata.Images.Format;
using Strata.Images.Qcow2;
using Strata.Images.Storage;
using Strata.Interop.Tests.Bitmaps;
using Xunit;

namespace Strata.Interop.Tests.Qcow2;

/// <summary>
/// The smallest cases of the library bugs <see cref="ImageOperationsModelTests"/> found, each against what QEMU 7.2
/// does with the same image.
/// </summary>
public sealed class ImageOperationsRegressionTests
{
    private static readonly FileStorageOptions Unsafe = new(ReadOnly: false, Direct: false, NoFlush: true);

    private static async Task<Qcow2Image> OpenAsync(string path) =>
        (Qcow2Image)await ImageOpener.OpenAsync(path, new ImageOpenOptions { Format = "qcow2", NoFlush = true });

    [Fact]
    public async Task SnapshotApply_RefusedWhileAnyBitmapExists_LikeQemu()
    {
        QemuTools.RequireTools("qemu-img");
        using var dir = new TempDir("opsreg-apply");
        string path = dir.Combine("a.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", path, "4M").EnsureSuccess();
        QemuTools.QemuImg("bitmap", "--add", "--disable", path, "b0").EnsureSuccess();
        QemuTools.QemuImg("snapshot", "-c", "s1", path).EnsureSuccess();
        var q = QemuTools.QemuImg("snapshot", "-a", "s1", path);
        Assert.Equal(1, q.ExitCode);
        Assert.Contains("Could not apply snapshot 's1': Device has active dirty bitmaps", q.StdErr, StringComparison.Ordinal);
        await using var img = await OpenAsync(path);
        var e = await Assert.ThrowsAsync<SnapshotException>(async () => await img.ApplySnapshotAsync("s1"));
        Assert.Equal("Device has active dirty bitmaps", e.Message);
    }

    /// <summary>
    /// A deliberate difference: QEMU 7.2's downgrade zeroes a preallocated zero cluster in place even when a snapshot
    /// still holds data there (the snapshot loses it and check reports OFLAG_COPIED errors). Strata gives the active
    /// table a cluster of its own: the snapshot keeps its data, the image checks clean.
    /// </summary>
    [Fact]
    public void Downgrade_KeepsSnapshotDataUnderAPreallocatedZeroCluster()
    {
        using var dir = new TempDir("opsreg-zero-shared");
        string path = dir.Combine("a.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", path, "4M").EnsureSuccess();
        QemuTools.QemuIo("-c", "write -P 0x5a 0 1M", path).EnsureSuccess();
        QemuTools.QemuImg("snapshot", "-c", "s1", path).EnsureSuccess();
        QemuTools.QemuIo("-c", "write -z 0 128k", path).EnsureSuccess(); // no unmap: the clusters stay allocated, flagged zero
        QemuTools.StrataImg("amend", "-o", "compat=0.10", path).EnsureSuccess();

        var check = QemuTools.QemuImg("check", path);
        Assert.True(check.ExitCode == 0, check.ToString());
        Assert.Contains("\"compat\": \"0.10\"", QemuTools.QemuImg("info", "--output=json", path).StdOut, StringComparison.Ordinal);
        string snap = dir.Combine("s1.raw");
        QemuTools.QemuImg("convert", "-l", "snapshot.name=s1", "-O", "raw", path, snap).EnsureSuccess();
        var read = QemuTools.QemuIo("-f", "raw", "-c", "read -P 0x5a 0 1M", snap);
        Assert.DoesNotContain("Pattern verification failed", read.StdOut, StringComparison.Ordinal);
        var active = QemuTools.QemuIo("-c", "read -P 0 0 128k", "-c", "read -P 0x5a 128k 896k", path);
        Assert.DoesNotContain("Pattern verification failed", active.StdOut, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Downgrade_RefusedWhileASnapshotHasAnotherSize_LikeQemu()
    {
        QemuTools.RequireTools("qemu-img");
        using var dir = new TempDir("opsreg-downgrade");
        string path = dir.Combine("a.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", path, "4M").EnsureSuccess();
        QemuTools.QemuImg("snapshot", "-c", "s1", path).EnsureSuccess();
        QemuTools.QemuImg("resize", "-q", path, "8M").EnsureSuccess();
        string copy = dir.Combine("b.qcow2");
        File.Copy(path, copy);
        var q = QemuTools.QemuImg("amend", "-o", "compat=0.10", copy);
        Assert.Equal(1, q.ExitCode);
        Assert.Contains("Internal snapshots prevent downgrade of image", q.StdErr, StringComparison.Ordinal);
        await using (var img = await OpenAsync(path))
        {
            var e = await Assert.ThrowsAsync<AmendException>(async () => await img.AmendAsync(new Qcow2AmendOptions { Version = 2 }));
            Assert.Equal("Internal snapshots prevent downgrade of image", e.Message);
            Assert.Equal(3, img.Header.Version);
        }
        Assert.Equal(File.ReadAllBytes(copy), File.ReadAllBytes(path));
    }

    [Fact]
    public async Task GrowingAnOverlay_OverALongerBackingFile_ReadsZeroesAndLeavesBitmapsClean()
    {
        QemuTools.RequireTools("qemu-img", "qemu-io", "qemu-nbd", "nbdinfo");
        using var dir = new TempDir("opsreg-grow");
        string basePath = dir.Combine("base.qcow2"), top = dir.Combine("top.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", basePath, "2M").EnsureSuccess();
        QemuTools.QemuIo("-c", "write -P 0xcd 0 2M", basePath).EnsureSuccess();
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", "-b", basePath, "-F", "qcow2", top, "498688").EnsureSuccess();
        await using (var img = await OpenAsync(top))
        {
            await img.AddDirtyBitmapAsync("b0", 4096, persistent: true);
            await img.ResizeAsync(2 << 20, allowShrink: false);
            var buf = new byte[(2 << 20) - 498688];
            await img.ReadAsync(buf, 498688);
            Assert.True(buf.AsSpan().IndexOfAnyExcept((byte)0) < 0, "the new area shows the backing file");
        }
        // QEMU reads the same zeroes, the image is clean, and the bitmap saw no guest write.
        QemuTools.QemuIo("-c", "read -P 0 498688 1598464", "-c", "read -P 0xcd 0 498688", top).EnsureSuccess();
        BitmapOracle.AssertCheckClean(top);
        Assert.Empty(BitmapOracle.QemuDirty(top, "b0"));
    }

    [Fact]
    public async Task GrowingAV2Overlay_OverALongerBackingFile_FailsAsQemu()
    {
        QemuTools.RequireTools("qemu-img");
        using var dir = new TempDir("opsreg-grow-v2");
        string basePath = dir.Combine("base.qcow2"), top = dir.Combine("top.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", basePath, "2M").EnsureSuccess();
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b", basePath, "-F", "qcow2", top, "1M").EnsureSuccess();
        string copy = dir.Combine("copy.qcow2");
        File.Copy(top, copy);
        var q = QemuTools.QemuImg("resize", copy, "2M");
        Assert.Equal(1, q.ExitCode);
        Assert.Contains("Failed to zero out new clusters: Operation not supported", q.StdErr, StringComparison.Ordinal);
        await using var img = await OpenAsync(top);
        var e = await Assert.ThrowsAsync<ImageException>(async () => await img.ResizeAsync(2 << 20, allowShrink: false));
        Assert.Equal("Failed to zero out new clusters: Operation not supported", e.Message);
        Assert.Equal(1 << 20, img.Size);
    }

    [Fact]
    public async Task SnapshotApply_RefusedForRefcountWidth_LeavesTheSizeAlone()
    {
        QemuTools.RequireTools("qemu-img");
        using var dir = new TempDir("opsreg-apply-rc");
        string path = dir.Combine("a.qcow2");
        await using (var c = await Qcow2Creator.CreateAsync(FileStorage.Create(path, Unsafe),
            new Qcow2CreateOptions { Size = 1 << 20, RefcountBits = 2 }))
            await c.WriteAsync(new byte[65536].Select(_ => (byte)7).ToArray(), 0);
        await using (var img = await OpenAsync(path))
        {
            await img.CreateSnapshotAsync(new Qcow2SnapshotCreateInfo { Name = "s1" });
            await img.CreateSnapshotAsync(new Qcow2SnapshotCreateInfo { Name = "s2" });
            await img.ResizeAsync(2 << 20, allowShrink: false);
            // Cluster 0 of the data has 3 references (active, s1, s2): applying s1 would need a fourth.
            var e = await Assert.ThrowsAsync<SnapshotException>(async () => await img.ApplySnapshotAsync("s1"));
            Assert.Matches("^Refcount of cluster [0-9]+ would exceed the 2-bit maximum$", e.Message);
            Assert.Equal(2 << 20, img.Size);
        }
        BitmapOracle.AssertCheckClean(path);
    }
}
