using Strata.Images.Format;
using Strata.Images.Qcow2;
using Strata.Images.Storage;
using Strata.Testing;
using Xunit;
using Xunit.Abstractions;

namespace Strata.Images.Tests.Qcow2;

/// <summary>
/// Model-based test of internal snapshots: random writes, zero writes, discards, resizes, snapshot creates, deletes
/// and applies on small images in many configurations, checked after every step against an in-memory model of
/// the active disk and of every snapshot (read through <see cref="Qcow2Image.OpenSnapshotAsync"/>); each image is
/// closed and reopened now and then, and every tenth final image goes through qemu-img check.
/// STRATA_SEED replays a run.
/// </summary>
public sealed class SnapshotPropertyTests(ITestOutputHelper output)
{
    private static readonly (Qcow2CreateOptions Options, bool Backing)[] Configs =
    [
        (new Qcow2CreateOptions { ClusterSize = 65536 }, false),
        (new Qcow2CreateOptions { ClusterSize = 512 }, false),
        (new Qcow2CreateOptions { ClusterSize = 4096, Version = 2 }, true),
        (new Qcow2CreateOptions { ClusterSize = 16384, ExtendedL2 = true }, true),
        (new Qcow2CreateOptions { ClusterSize = 1024, RefcountBits = 4, LazyRefcounts = true }, false),
        (new Qcow2CreateOptions { ClusterSize = 2048, RefcountBits = 64 }, true),
    ];

    [Fact]
    public async Task RandomSequences_MatchTheModel()
    {
        QemuTools.RequireTools("qemu-img");
        int seed = Environment.GetEnvironmentVariable("STRATA_SEED") is { Length: > 0 } s ? int.Parse(s) : Random.Shared.Next();
        output.WriteLine($"seed {seed}");
        var rng = new Random(seed);
        using var dir = new TempDir("snapprop");
        int checkedWithQemu = 0;
        for (int seq = 0; seq < 200; seq++)
        {
            var (opts, withBacking) = Configs[seq % Configs.Length];
            string ctx = $"seed {seed}, sequence {seq}, cluster {opts.ClusterSize}, v{opts.Version}, ext {opts.ExtendedL2}, backing {withBacking}";
            string path = dir.Combine($"s{seq}.qcow2");
            await RunSequenceAsync(rng, dir, path, opts, withBacking, ctx);
            if (seq % 10 == 0)
            {
                var chk = QemuTools.QemuImg("check", path);
                Assert.True(chk.ExitCode == 0, $"{ctx}: qemu-img check\n{chk}");
                checkedWithQemu++;
            }
            File.Delete(path);
            File.Delete(path + ".base");
        }
        output.WriteLine($"200 sequences, {checkedWithQemu} checked by qemu-img");
    }

    private static async Task RunSequenceAsync(Random rng, TempDir dir, string path, Qcow2CreateOptions opts, bool withBacking, string ctx)
    {
        long size = (rng.Next(2, 9) * 128L) << 10;
        byte[] below = new byte[4 << 20];
        string? basePath = null;
        if (withBacking)
        {
            basePath = path + ".base";
            await using (var b = await Qcow2Creator.CreateAsync(FileStorage.Create(basePath, FileStorageOptions.Default), new Qcow2CreateOptions { Size = below.Length }))
            {
                rng.NextBytes(below.AsSpan(0, 256 << 10));
                await b.WriteAsync(below.AsMemory(0, 256 << 10), 0);
            }
            opts = opts with { BackingFile = basePath, BackingFormat = "qcow2" };
        }
        await using (await Qcow2Creator.CreateAsync(FileStorage.Create(path, FileStorageOptions.Default), opts with { Size = size }))
        {
        }
        var active = new byte[size];
        Array.Copy(below, active, size);
        var snaps = new Dictionary<string, byte[]>(); // by ID
        IImage img = await ImageOpener.OpenAsync(path, new ImageOpenOptions { Format = "qcow2" });
        try
        {
            int steps = rng.Next(6, 14);
            for (int step = 0; step < steps; step++)
            {
                var q = (Qcow2Image)img;
                int op = rng.Next(100);
                string what;
                long off = rng.NextInt64(size / 512) * 512, len = Math.Min(size - off, rng.Next(1, 300) * 512L);
                if (op < 30)
                {
                    var data = new byte[len];
                    rng.NextBytes(data);
                    await img.WriteAsync(data, off);
                    data.CopyTo(active, off);
                    what = $"write {off} {len}";
                }
                else if (op < 38)
                {
                    await img.WriteZeroesAsync(off, len, rng.Next(2) == 0 ? ZeroFlags.MayUnmap : ZeroFlags.None);
                    Array.Clear(active, (int)off, (int)len);
                    what = $"zero {off} {len}";
                }
                else if (op < 44)
                {
                    // What a discarded range reads as is up to the format; only the snapshots must not change.
                    await img.DiscardAsync(off, len);
                    await img.ReadAsync(active.AsMemory((int)off, (int)len), off);
                    what = $"discard {off} {len}";
                }
                else if (op < 64)
                {
                    if (snaps.Count >= 5)
                        continue;
                    var sn = await q.CreateSnapshotAsync(new Qcow2SnapshotCreateInfo { Name = $"n{step % 3}" });
                    snaps[sn.Id] = (byte[])active.Clone();
                    what = $"create {sn.Id}";
                }
                else if (op < 76)
                {
                    if (snaps.Count == 0)
                        continue;
                    string id = snaps.Keys.ElementAt(rng.Next(snaps.Count));
                    await q.DeleteSnapshotAsync(id, null);
                    snaps.Remove(id);
                    what = $"delete {id}";
                }
                else if (op < 90)
                {
                    if (snaps.Count == 0)
                        continue;
                    string id = snaps.Keys.ElementAt(rng.Next(snaps.Count));
                    await q.ApplySnapshotAsync(id);
                    active = (byte[])snaps[id].Clone();
                    size = active.Length;
                    what = $"apply {id}";
                }
                else if (op < 95 && opts.Version >= 3 && !withBacking)
                {
                    long newSize = (rng.Next(1, 9) * 128L) << 10;
                    await img.ResizeAsync(newSize, allowShrink: true);
                    var grown = new byte[newSize];
                    Array.Copy(active, grown, Math.Min(size, newSize));
                    active = grown;
                    size = newSize;
                    what = $"resize {newSize}";
                }
                else
                {
                    await img.DisposeAsync();
                    img = await ImageOpener.OpenAsync(path, new ImageOpenOptions { Format = "qcow2" });
                    what = "reopen";
                }
                await AssertMatchesAsync((Qcow2Image)img, active, snaps, $"{ctx}, step {step} ({what})");
            }
        }
        finally
        {
            await img.DisposeAsync();
        }
    }

    private static async Task AssertMatchesAsync(Qcow2Image img, byte[] active, Dictionary<string, byte[]> snaps, string ctx)
    {
        Assert.True(img.Size == active.Length, $"{ctx}: size {img.Size}, model {active.Length}");
        var buf = new byte[active.Length];
        await img.ReadAsync(buf, 0);
        AssertSame(active, buf, $"{ctx}: active disk");
        var list = await img.GetSnapshotsAsync();
        Assert.True(list.Count == snaps.Count, $"{ctx}: {list.Count} snapshots, model {snaps.Count}");
        foreach (var sn in list)
        {
            var expect = snaps[sn.Id];
            Assert.Equal((ulong)expect.Length, sn.DiskSize);
            await using var view = await img.OpenSnapshotAsync(sn.Id, null);
            // The view has the image's current size, as QEMU's load_tmp; compare what both cover.
            int n = (int)Math.Min(view.Size, expect.Length);
            var got = new byte[n];
            await view.ReadAsync(got, 0);
            AssertSame(expect.AsSpan(0, n).ToArray(), got, $"{ctx}: snapshot {sn.Id}");
        }
    }

    private static void AssertSame(byte[] expect, byte[] got, string what)
    {
        int i = expect.AsSpan().CommonPrefixLength(got);
        Assert.True(i == expect.Length, $"{what}: first difference at byte {i}");
    }
}
