using Strata.Images.Qcow2;
using Strata.Images.Storage;
using Strata.Interop.Tests.Oracle;
using Xunit;

namespace Strata.Interop.Tests.Qcow2;

/// <summary>Images created by Strata are byte-identical to the ones qemu-img 7.2 creates with the same options.</summary>
public sealed class CreateMatchesQemuImgTests
{
    public static TheoryData<string, string> Cases() => new()
    {
        { "1G", "" },
        { "1G", "compat=0.10" },
        { "100M", "cluster_size=512,refcount_bits=1" },
        { "1G", "cluster_size=512,refcount_bits=64" },
        { "1G", "cluster_size=4096,refcount_bits=8" },
        { "10G", "cluster_size=2M" },
        { "1G", "extended_l2=on,lazy_refcounts=on" },
        { "1G", "compression_type=zstd" },
        { "3G", "refcount_bits=2" },
        { "64M", "preallocation=metadata" },
        { "16M", "preallocation=metadata,cluster_size=4096" },
        { "0", "" },
        { "512", "cluster_size=512" },
        { "100T", "" },
        { "3M", "preallocation=full" },
        { "3M", "preallocation=falloc" },
        { "1M", "extended_l2=on,preallocation=metadata" },
        { "64M", "preallocation=falloc,cluster_size=4096" },
        { "1000M", "preallocation=full,cluster_size=2M" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Create_IsByteIdenticalToQemuImg(string size, string opts)
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("create");
        string theirs = dir.Combine("qemu.qcow2"), ours = dir.Combine("strata.qcow2");
        var args = new List<string> { "create", "-q", "-f", "qcow2" };
        if (opts.Length > 0)
            args.AddRange(["-o", opts]);
        args.AddRange([theirs, size]);
        QemuTools.QemuImg([.. args]).EnsureSuccess();

        var o = ParseOptions(opts) with { Size = QemuSize(size) };
        await using (var img = await Qcow2Creator.CreateAsync(FileStorage.Create(ours, FileStorageOptions.Default), o))
        {
        }

        var a = await File.ReadAllBytesAsync(theirs);
        var b = await File.ReadAllBytesAsync(ours);
        Assert.Equal(a.Length, b.Length);
        for (int i = 0; i < a.Length; i++)
            if (a[i] != b[i])
                Assert.Fail($"first difference at byte 0x{i:x}: qemu-img 0x{a[i]:x2}, strata 0x{b[i]:x2}");
        QemuTools.QemuImg("check", ours).EnsureSuccess();
    }

    internal static long QemuSize(string s)
    {
        char u = s[^1];
        long mult = u switch { 'K' => 1L << 10, 'M' => 1L << 20, 'G' => 1L << 30, 'T' => 1L << 40, _ => 1 };
        return long.Parse(mult == 1 ? s : s[..^1]) * mult;
    }

    internal static Qcow2CreateOptions ParseOptions(string opts)
    {
        var o = new Qcow2CreateOptions();
        foreach (var kv in opts.Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            var (k, v) = (kv.Split('=')[0], kv.Split('=')[1]);
            o = k switch
            {
                "compat" => o with { Version = v == "0.10" ? 2 : 3 },
                "cluster_size" => o with { ClusterSize = (int)QemuSize(v) },
                "refcount_bits" => o with { RefcountBits = int.Parse(v) },
                "extended_l2" => o with { ExtendedL2 = v == "on" },
                "lazy_refcounts" => o with { LazyRefcounts = v == "on" },
                "compression_type" => o with { CompressionType = v == "zstd" ? CompressionType.Zstd : CompressionType.Zlib },
                "preallocation" => o with { Preallocation = Enum.Parse<Preallocation>(v, ignoreCase: true) },
                _ => throw new ArgumentException(k),
            };
        }
        return o;
    }
}
