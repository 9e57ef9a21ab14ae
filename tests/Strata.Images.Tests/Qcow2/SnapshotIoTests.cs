using Strata.Images.Qcow2;
using Strata.Images.Storage;
using Strata.Testing;
using Xunit;

namespace Strata.Images.Tests.Qcow2;

/// <summary>
/// What snapshot operations cost in flushes (no more fdatasyncs than qemu-img 7.2 issues for the same operation), and
/// the refcount-overflow refusal, which must leave the image untouched.
/// </summary>
public sealed class SnapshotIoTests
{
    private const int MiB = 1 << 20;

    private static async Task<(FileStorage File, Qcow2Image Image)> OpenAsync(string path)
    {
        var file = FileStorage.Open(path, FileStorageOptions.Default);
        return (file, await Qcow2Image.OpenAsync(file));
    }

    [Fact]
    public async Task CreateApplyDelete_IssueNoMoreFlushesThanQemuImg_AndLeaveAConsistentImage()
    {
        QemuTools.RequireTools("qemu-img");
        using var dir = new TempDir("snapio");
        string path = dir.Combine("a.qcow2");
        await using (var img = await Qcow2Creator.CreateAsync(FileStorage.Create(path, FileStorageOptions.Default), new Qcow2CreateOptions { Size = 64 * MiB }))
        {
            var data = new byte[4 * MiB];
            for (long off = 0; off < 64 * MiB; off += data.Length)
            {
                data.AsSpan().Fill((byte)(off / data.Length + 1));
                await img.WriteAsync(data, off);
            }
        }

        // qemu-img 7.2 on a fully written image (its traces): create 6, apply 5 and delete 6 fdatasyncs, counting the
        // flush at close. Each operation runs as strata-img does: open, operate, close.
        async Task<long> FlushesAsync(Func<Qcow2Image, Task> op)
        {
            var (file, image) = await OpenAsync(path);
            await using (file)
            {
                await using (image)
                    await op(image);
                return file.FdatasyncCount;
            }
        }
        Assert.InRange(await FlushesAsync(i => i.CreateSnapshotAsync(new Qcow2SnapshotCreateInfo { Name = "s" }).AsTask()), 1, 6);
        Assert.InRange(await FlushesAsync(i => i.WriteAsync(new byte[65536], 8 * MiB).AsTask()), 1, 6);
        Assert.InRange(await FlushesAsync(i => i.ApplySnapshotAsync("s").AsTask()), 1, 5);
        Assert.InRange(await FlushesAsync(i => i.DeleteSnapshotAsync(null, "s").AsTask()), 1, 6);
        Assert.Equal(0, await FlushesAsync(_ => Task.CompletedTask)); // nothing written: nothing to flush

        QemuTools.QemuImg("check", path).EnsureSuccess();
        var back = new byte[65536];
        var (f2, i2) = await OpenAsync(path);
        await using (f2)
        await using (i2)
        {
            await i2.ReadAsync(back, 8 * MiB);
            Assert.All(back, b => Assert.Equal(3, b)); // the applied snapshot's data, not the write after it
        }
    }

    [Theory]
    [InlineData(1, 1)] // one reference is all a 1-bit refcount holds: no snapshot fits
    [InlineData(2, 3)] // 2-bit refcounts: the active image and two snapshots
    public async Task CreateSnapshot_RefusesARefcountOverflow_AndChangesNothing(int refcountBits, int maxReferences)
    {
        QemuTools.RequireTools("qemu-img");
        using var dir = new TempDir("snapovf");
        string path = dir.Combine("a.qcow2");
        await using (var img = await Qcow2Creator.CreateAsync(FileStorage.Create(path, FileStorageOptions.Default),
            new Qcow2CreateOptions { Size = 4 * MiB, ClusterSize = 4096, RefcountBits = refcountBits }))
            await img.WriteAsync(new byte[1 * MiB].AsMemory(), 512 * 1024);

        for (int n = 1; n < maxReferences; n++)
        {
            var (file, image) = await OpenAsync(path);
            await using (file)
            await using (image)
                await image.CreateSnapshotAsync(new Qcow2SnapshotCreateInfo { Name = $"s{n}" });
        }
        byte[] before = await File.ReadAllBytesAsync(path);
        var (f, i) = await OpenAsync(path);
        await using (f)
        await using (i)
        {
            var e = await Assert.ThrowsAsync<SnapshotException>(() => i.CreateSnapshotAsync(new Qcow2SnapshotCreateInfo { Name = "over" }).AsTask());
            Assert.Equal(SnapshotException.EINVAL, e.Errno);
            Assert.Contains($"{refcountBits}-bit maximum", e.Detail);
            Assert.Equal(maxReferences - 1, (await i.GetSnapshotsAsync()).Count);
        }
        Assert.Equal(before, await File.ReadAllBytesAsync(path));
        QemuTools.QemuImg("check", path).EnsureSuccess();
    }
}
