using Strata.Images.Format;
using Strata.Images.Qcow2;
using Strata.Images.Storage;
using Strata.Interop.Tests.Oracle;
using Xunit;

namespace Strata.Interop.Tests.Qcow2;

/// <summary>Basic write paths checked by qemu-io and qemu-img: what Strata writes reads back in QEMU, and images stay clean.</summary>
public sealed class SmokeReadWriteTests
{
    [Theory]
    [InlineData("")]
    [InlineData("direct")]
    [InlineData("compat=0.10")]
    [InlineData("cluster_size=512,refcount_bits=1")]
    [InlineData("cluster_size=512,refcount_bits=64")]
    [InlineData("extended_l2=on")]
    [InlineData("cluster_size=2M")]
    [InlineData("lazy_refcounts=on")]
    public async Task WritesZeroesAndDiscards_ReadBackInQemu(string opts)
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("smoke");
        string path = dir.Combine("a.qcow2");
        bool direct = opts == "direct";
        var o = CreateMatchesQemuImgTests.ParseOptions(direct ? "" : opts) with { Size = 64L << 20 };
        await using (var created = await Qcow2Creator.CreateAsync(FileStorage.Create(path, FileStorageOptions.Default), o))
        {
        }
        // cache.direct=on: every request reaches the file through O_DIRECT (aligned bounce buffers where needed).
        await using (var img = await ImageOpener.OpenAsync(path, new ImageOpenOptions { Direct = direct }))
        {
            await img.WriteAsync(Fill(0x11, 4096), 0);
            await img.WriteAsync(Fill(0x22, 65536 * 3 + 100), 1 << 20 | 300);
            await img.WriteAsync(Fill(0x33, 1000), 8 << 20);
            await img.WriteAsync(Fill(0x44, 4096), 2048); // overwrite across the first write
            await img.WriteZeroesAsync(32L << 20, 1 << 20, ZeroFlags.MayUnmap);
            await img.WriteAsync(Fill(0x55, 2 << 20), 40L << 20);
            await img.DiscardAsync(40L << 20, 1 << 20);
            await img.WriteZeroesAsync(41L << 20, 4096);
        }
        var check = QemuTools.QemuImg("check", path);
        Assert.True(check.ExitCode == 0, check.StdOut + check.StdErr);
        string[] reads =
        [
            "read -P 0x11 0 2048", "read -P 0x44 2048 4096", "read -P 0 6144 4096",
            $"read -P 0x22 {1 << 20 | 300} {65536 * 3 + 100}",
            $"read -P 0x33 {8 << 20} 1000", $"read -P 0 {32L << 20} {1 << 20}",
            // A discard smaller than a cluster is ignored, as in QEMU.
            o.ClusterSize > (1 << 20) ? $"read -P 0x55 {40L << 20} {1 << 20}" : $"read -P 0 {40L << 20} {1 << 20}", $"read -P 0x55 {41L << 20} 0", $"read -P 0 {41L << 20} 4096",
            $"read -P 0x55 {(41L << 20) + 4096} {(1 << 20) - 4096}",
        ];
        foreach (var r in reads)
        {
            var res = QemuTools.QemuIo("-c", r, path);
            Assert.True(res.ExitCode == 0 && !res.StdOut.Contains("Pattern verification failed", StringComparison.Ordinal), $"{r}: {res.StdOut}{res.StdErr}");
        }
    }

    [Fact]
    public async Task QemuWrittenImage_ReadsTheSameInStrata()
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("smoke");
        string basePath = dir.Combine("base.qcow2"), top = dir.Combine("top.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", basePath, "16M").EnsureSuccess();
        QemuTools.QemuIo("-c", "write -P 0xaa 0 1M", "-c", "write -P 0xbb 4M 64k", basePath).EnsureSuccess();
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top).EnsureSuccess();
        QemuTools.QemuIo("-c", "write -P 0xcc 512k 4k", "-c", "write -z 4M 32k", top).EnsureSuccess();
        string raw = dir.Combine("flat.raw");
        QemuTools.QemuImg("convert", "-O", "raw", top, raw).EnsureSuccess();
        var expected = await File.ReadAllBytesAsync(raw);
        await using var img = await ImageOpener.OpenAsync(top, new ImageOpenOptions { ReadOnly = true });
        var actual = new byte[img.Size];
        await img.ReadAsync(actual, 0);
        Assert.True(expected.AsSpan().SequenceEqual(actual), "contents differ from qemu-img convert's");
    }

    /// <summary>
    /// As QEMU: while the image is open read-write its bitmaps are in use on disk; the write is recorded and a
    /// clean close stores the bitmap and clears in-use.
    /// </summary>
    [Fact]
    public async Task WritingAnImageWithPersistentBitmaps_TracksTheWriteAndStoresOnClose()
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("smoke");
        string path = dir.Combine("bm.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", path, "16M").EnsureSuccess();
        QemuTools.QemuImg("bitmap", "--add", path, "b0").EnsureSuccess();
        await using (var img = await ImageOpener.OpenAsync(path, new ImageOpenOptions()))
        {
            await img.WriteAsync(Fill(0x5a, 4096), 0);
            var open = QemuTools.QemuImg("info", "-U", "--output=json", path).EnsureSuccess();
            Assert.Contains("\"in-use\"", open.StdOut, StringComparison.Ordinal);
        }
        var info = QemuTools.QemuImg("info", "--output=json", path).EnsureSuccess();
        Assert.DoesNotContain("\"in-use\"", info.StdOut, StringComparison.Ordinal);
        Assert.Equal(0, QemuTools.QemuImg("check", path).ExitCode);
        var map = QemuTools.NbdInfo("--map=qemu:dirty-bitmap:b0", "--", "[", QemuTools.Resolve("qemu-nbd"), "-r", "-f", "qcow2", "-B", "b0", path, "]").EnsureSuccess();
        Assert.StartsWith("0 65536 1 dirty", string.Join(' ', map.StdOut.Split([' ', '\n'], StringSplitOptions.RemoveEmptyEntries)), StringComparison.Ordinal);
    }

    [Fact]
    public async Task UnknownAutoclearBits_AreClearedWhenOpenedForWriting()
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("smoke");
        string path = dir.Combine("ac.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", path, "16M").EnsureSuccess();
        await using (var f = File.OpenWrite(path))
        {
            f.Position = 88 + 7;
            f.WriteByte(0x84); // unknown autoclear bits 2 and 7
        }
        await using (var img = await ImageOpener.OpenAsync(path, new ImageOpenOptions()))
        {
        }
        var bytes = await File.ReadAllBytesAsync(path);
        Assert.Equal(0, bytes[88 + 7]);
        Assert.Equal(0, QemuTools.QemuImg("check", path).ExitCode);
    }

    private static byte[] Fill(byte b, int n)
    {
        var a = new byte[n];
        Array.Fill(a, b);
        return a;
    }
}
