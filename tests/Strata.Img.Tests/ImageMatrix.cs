
namespace Strata.Img.Tests;

/// <summary>
/// A directory of images made by qemu-img and qemu-io (the oracle): qcow2 v2/v3, cluster sizes from 512 bytes to
/// 2 MiB, refcount widths 1..64, extended L2, zstd, backing chains with relative names, preallocation modes,
/// compressed clusters, zero clusters, raw files, odd sizes. Built once per test run; tests only read it.
/// </summary>
public sealed class ImageMatrix : IDisposable
{
    private readonly TempDir _dir = new("img-matrix");

    public string Dir => _dir.Path;

    /// <summary>Every image of the matrix (relative names).</summary>
    public static readonly string[] Images =
    [
        "base.qcow2", "sub/mid.qcow2", "sub/top.qcow2", "chain4.qcow2", "v2.qcow2", "v2z.qcow2", "r.raw", "e.qcow2",
        "small.qcow2", "big.qcow2", "rb.qcow2", "pm.qcow2", "pm0.qcow2", "pf.qcow2", "pfu.qcow2", "pme.qcow2",
        "pmeb.qcow2", "lazy.qcow2", "short.qcow2", "long.qcow2", "rand.raw", "comp_rand.qcow2", "text.raw",
        "comp.qcow2", "compz.qcow2", "ovl.qcow2", "zeroalloc.qcow2", "empty.raw", "odd.qcow2", "frag.qcow2",
        "rfull.raw", "odd.raw", "dirty.qcow2", "rc8.qcow2", "weird name.qcow2",
    ];

    public ImageMatrix()
    {
        QemuTools.RequireTools("qemu-img", "qemu-io");
        Directory.CreateDirectory(Path.Combine(Dir, "sub"));
        Img("create", "-q", "-f", "qcow2", "base.qcow2", "64M");
        Io("base.qcow2", "write -P 7 0 1M", "write -P 9 10M 64k", "write -z 20M 1M");
        Img("create", "-q", "-f", "qcow2", "-b", "../base.qcow2", "-F", "qcow2", "sub/mid.qcow2");
        Io("sub/mid.qcow2", "write -P 1 512k 1M", "write -z 10M 64k");
        Img("create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "sub/top.qcow2", "128M");
        Io("sub/top.qcow2", "write -P 2 100M 64k", "discard 0 64k");
        Img("create", "-q", "-f", "qcow2", "-b", "sub/top.qcow2", "-F", "qcow2", "chain4.qcow2");
        Io("chain4.qcow2", "write -P 9 5M 64k");
        Img("create", "-q", "-f", "qcow2", "-o", "compat=0.10,cluster_size=4k", "v2.qcow2", "1M");
        Io("v2.qcow2", "write -P 3 4k 8k", "write -z 64k 64k");
        Img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2z.qcow2", "4M");
        Io("v2z.qcow2", "write -P 3 0 1M", "write -z 0 512k");
        Img("create", "-q", "-f", "raw", "r.raw", "3M");
        IoFmt("raw", "r.raw", "write -P 4 1M 4k");
        Img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on,compression_type=zstd,refcount_bits=1", "e.qcow2", "100M");
        Io("e.qcow2", "write -P 5 0 4k", "write -P 5 70k 3k", "write -z 1M 16k");
        Img("create", "-q", "-f", "qcow2", "-o", "refcount_bits=64,cluster_size=512", "small.qcow2", "5M");
        Io("small.qcow2", "write -P 6 0 100k");
        Img("create", "-q", "-f", "qcow2", "-o", "cluster_size=2M", "big.qcow2", "1G");
        Io("big.qcow2", "write -P 6 3M 1M");
        Img("create", "-q", "-f", "qcow2", "-b", "r.raw", "-F", "raw", "rb.qcow2");
        Io("rb.qcow2", "write -P 8 2M 64k");
        Img("create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", "pm.qcow2", "4M");
        Io("pm.qcow2", "write -P 3 0 64k", "write -P 3 3968k 128k");
        Img("create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", "pm0.qcow2", "4M");
        Img("create", "-q", "-f", "qcow2", "-o", "preallocation=falloc", "pf.qcow2", "2M");
        Img("create", "-q", "-f", "qcow2", "-o", "preallocation=full", "pfu.qcow2", "2M");
        Img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on,preallocation=metadata", "pme.qcow2", "10M");
        Io("pme.qcow2", "write -P 1 64k 8k");
        Img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on,preallocation=metadata", "-b", "base.qcow2", "-F", "qcow2", "pmeb.qcow2");
        Img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", "lazy.qcow2", "8M");
        Io("lazy.qcow2", "write -P 1 0 1M");
        Img("create", "-q", "-f", "qcow2", "short.qcow2", "1M");
        Img("create", "-q", "-f", "qcow2", "-b", "short.qcow2", "-F", "qcow2", "long.qcow2", "4M");
        Io("long.qcow2", "write -P 1 3M 64k");
        var rnd = new byte[1 << 20];
        new Random(42).NextBytes(rnd);
        File.WriteAllBytes(Path.Combine(Dir, "rand.raw"), rnd);
        Img("convert", "-c", "-O", "qcow2", "rand.raw", "comp_rand.qcow2");
        var text = System.Text.Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat("hello\n", (3 << 20) / 6)));
        File.WriteAllBytes(Path.Combine(Dir, "text.raw"), text);
        Img("convert", "-c", "-O", "qcow2", "text.raw", "comp.qcow2");
        Img("convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", "text.raw", "compz.qcow2");
        Io("comp.qcow2", "write -P 1 64k 4k");
        Img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "ovl.qcow2");
        Io("ovl.qcow2", "write -z -u 0 128k", "write -P 3 1M 64k");
        Img("create", "-q", "-f", "qcow2", "zeroalloc.qcow2", "4M");
        Io("zeroalloc.qcow2", "write -P 3 0 1M", "write -z 0 1M");
        Img("create", "-q", "-f", "raw", "empty.raw", "0");
        Img("create", "-q", "-f", "qcow2", "odd.qcow2", "1000000");
        Io("odd.qcow2", "write -P 1 0 512");
        Img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "frag.qcow2", "1M");
        Io("frag.qcow2", "write -P 1 64k 4k", "write -P 1 0 4k", "write -P 1 32k 4k");
        Img("create", "-q", "-f", "raw", "-o", "preallocation=full", "rfull.raw", "1M");
        using (var f = File.Create(Path.Combine(Dir, "odd.raw")))
            f.SetLength(1000);
        Img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", "dirty.qcow2", "4M");
        // qemu-io's abort leaves the dirty bit set (lazy refcounts not written back).
        QemuTools.RunIn(Dir, "qemu-io", "-c", "write -P 1 0 1M", "-c", "abort", "dirty.qcow2");
        Img("create", "-q", "-f", "qcow2", "-o", "refcount_bits=8,cluster_size=16k", "rc8.qcow2", "16M");
        Io("rc8.qcow2", "write -P 2 1M 2M");
        Img("create", "-q", "-f", "qcow2", "weird name.qcow2", "1M");
    }

    private void Img(params string[] args) => QemuTools.RunIn(Dir, "qemu-img", args).EnsureSuccess();

    private void Io(string file, params string[] cmds) => IoFmt("qcow2", file, cmds);

    private void IoFmt(string fmt, string file, params string[] cmds)
    {
        var args = new List<string> { "-f", fmt };
        foreach (var c in cmds)
        {
            args.Add("-c");
            args.Add(c);
        }
        args.Add(file);
        QemuTools.RunIn(Dir, "qemu-io", [.. args]).EnsureSuccess();
    }

    public void Dispose() => _dir.Dispose();
}

[CollectionDefinition("matrix")]
public sealed class MatrixCollection : ICollectionFixture<ImageMatrix>;
