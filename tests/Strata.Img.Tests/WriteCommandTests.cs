
namespace Strata.Img.Tests;

/// <summary>
/// create, convert, resize and check -r: each tool runs in its own copy of the inputs; outputs and exit codes must
/// match, and the files they write must be the same bytes.
/// </summary>
[Collection("matrix")]
public sealed class WriteCommandTests(ImageMatrix m)
{
    private sealed class Pair : IDisposable
    {
        public TempDir Q { get; } = new("q");
        public TempDir S { get; } = new("s");

        public void CopyIn(string from, params string[] files)
        {
            foreach (var f in files)
            {
                foreach (var d in new[] { Q.Path, S.Path })
                {
                    var dst = Path.Combine(d, f);
                    Directory.CreateDirectory(Path.GetDirectoryName(dst)!);
                    File.Copy(Path.Combine(from, f), dst);
                }
            }
        }

        public (ProcessResult, ProcessResult) Run(params string[] args) => Differential.Run(Q.Path, S.Path, args);

        public void Dispose()
        {
            Q.Dispose();
            S.Dispose();
        }
    }

    private static void AssertSameFile(Pair p, string name)
    {
        string q = Path.Combine(p.Q.Path, name), s = Path.Combine(p.S.Path, name);
        Assert.Equal(File.Exists(q), File.Exists(s));
        if (File.Exists(q))
            Assert.True(File.ReadAllBytes(q).AsSpan().SequenceEqual(File.ReadAllBytes(s)), $"{name} differs from qemu-img's");
    }

    /// <summary>
    /// Same bytes, except that the library may leave a file shorter where QEMU zero-fills the tail of a
    /// freshly allocated last cluster: then the longer file's extra bytes must all be zero.
    /// </summary>
    private static void AssertSameContent(Pair p, string name)
    {
        var q = File.ReadAllBytes(Path.Combine(p.Q.Path, name));
        var s = File.ReadAllBytes(Path.Combine(p.S.Path, name));
        int n = Math.Min(q.Length, s.Length);
        Assert.True(q.AsSpan(0, n).SequenceEqual(s.AsSpan(0, n)), $"{name} differs from qemu-img's");
        var longer = q.Length > s.Length ? q : s;
        Assert.False(longer.AsSpan(n).ContainsAnyExcept((byte)0), $"{name}: the tail beyond {n} bytes is not zero");
    }

    public static TheoryData<string[]> CreateCases() => new(
        new[]
        {
            "-f qcow2 x.qcow2 1G",
            "-f qcow2 -o cluster_size=4k,compat=0.10 x.qcow2 1M",
            "-f qcow2 -o compat=1.1,lazy_refcounts=on,refcount_bits=64,compression_type=zstd x.qcow2 10M",
            "-f qcow2 -o extended_l2=on,cluster_size=32k x.qcow2 100M",
            "-f qcow2 -o refcount_bits=1,cluster_size=512 x.qcow2 3M",
            "-f qcow2 -o cluster_size=2M x.qcow2 1E",
            "-f qcow2 -o cluster_size=512 x.qcow2 1P",
            "-f qcow2 -o preallocation=metadata x.qcow2 5M",
            "-f qcow2 -o preallocation=metadata,compat=0.10 x.qcow2 5M",
            "-f qcow2 -b base.qcow2 -F qcow2 x.qcow2",
            "-f qcow2 -b base.qcow2 -F qcow2 x.qcow2 2G",
            "-f qcow2 -b base.qcow2 x.qcow2",
            "-f qcow2 -u -b nonexist -F qcow2 x.qcow2 1M",
            "-f qcow2 -b nonexist -F qcow2 x.qcow2 1M",
            "-f qcow2 -o backing_file=base.qcow2,backing_fmt=qcow2,size=5M x.qcow2",
            "-f qcow2 -b r.raw -F raw x.qcow2",
            "-f qcow2 -b r.raw -F qcow2 x.qcow2",
            "-f raw x.raw 1M",
            "x.raw 100",
            "-f raw -o preallocation=full x.raw 1M",
            "-f raw -o preallocation=falloc x.raw 1M",
            "-f raw -o preallocation=metadata x.raw 1M",
            "-f raw -o preallocation=xx x.raw 1M",
            "-q -f qcow2 x.qcow2 1.5M",
            "-f qcow2 x.qcow2 1000",
            "-f qcow2 -o help",
            "-f raw -o help x.raw",
            "-f qcow2 -o size=5M x.qcow2 6M",
            "-f qcow2 x.qcow2",
            "-f qcow2 -o foo=1 x.qcow2 1M",
            "-f qcow2 -o cluster_size=3k x.qcow2 1M",
            "-f qcow2 -o cluster_size=abc x.qcow2 1M",
            "-f qcow2 -o lazy_refcounts=maybe x.qcow2 1M",
            "-f qcow2 -o refcount_bits=3 x.qcow2 1M",
            "-f qcow2 -o compat=2 x.qcow2 1M",
            "-f qcow2 -o compression_type=lz4 x.qcow2 1M",
            "-f qcow2 -o extended_l2=on,cluster_size=4k x.qcow2 1M",
            "-f qcow2 -o compat=0.10,lazy_refcounts=on x.qcow2 1M",
            "-f qcow2 -o backing_fmt=qcow2 x.qcow2 1M",
            "-f qcow2 -o lazy_refcounts,nolazy_refcounts x.qcow2 1M",
            "-f qcow2 -o refcount_bits=0x40 x.qcow2 1M",
            "-f qcow2 -o cluster_size=4k, x.qcow2 1M",
            "-f qcow2 -o compat=v2 x.qcow2 1M",
            "-f raw -b base.qcow2 x.raw 1M",
            "-f foo x.foo 1M",
            "-f qcow2 x.qcow2 1M 2M",
            "-f qcow2 x.qcow2 1.5e1k",
            "-f qcow2 x.qcow2 16E",
            "-f qcow2 -b x.qcow2 -F qcow2 x.qcow2 1M",
        }.Select(s => s.Split(' ')));

    [Theory]
    [MemberData(nameof(CreateCases))]
    public void Create(string[] args)
    {
        using var p = new Pair();
        p.CopyIn(m.Dir, "base.qcow2", "r.raw");
        var (q, s) = p.Run(["create", .. args]);
        Differential.AssertSame(q, s);
        AssertSameFile(p, "x.qcow2");
        AssertSameFile(p, "x.raw");
    }

    /// <summary>Preallocated images are laid out as qemu-img lays them out.</summary>
    [Theory]
    [InlineData("-f qcow2 -o preallocation=full x.qcow2 3M")]
    [InlineData("-f qcow2 -o preallocation=falloc x.qcow2 3M")]
    [InlineData("-f qcow2 -o extended_l2=on,preallocation=metadata x.qcow2 1M")]
    public void CreatePreallocated(string args)
    {
        using var p = new Pair();
        var (q, s) = p.Run(["create", .. args.Split(' ')]);
        Differential.AssertSame(q, s);
        AssertSameFile(p, "x.qcow2");
    }

    public static TheoryData<string, string> ConvertCases()
    {
        string[] images = ["base.qcow2", "sub/top.qcow2", "chain4.qcow2", "r.raw", "rb.qcow2", "comp.qcow2", "text.raw", "e.qcow2",
            "v2.qcow2", "rand.raw", "odd.raw", "pm.qcow2", "ovl.qcow2", "zeroalloc.qcow2", "long.qcow2", "small.qcow2"];
        string[] opts = ["-O qcow2", "-O raw", "-c -O qcow2", "-O qcow2 -o cluster_size=4k,compat=0.10", "-O qcow2 -o extended_l2=on",
            "-S 0 -O qcow2", "-c -O qcow2 -o compression_type=zstd", "-m 1 -W -O qcow2"];
        var d = new TheoryData<string, string>();
        foreach (var i in images)
            foreach (var o in opts)
                d.Add(o, i);
        return d;
    }

    private static readonly string[] AllInputs =
        ["base.qcow2", "sub/mid.qcow2", "sub/top.qcow2", "chain4.qcow2", "r.raw", "rb.qcow2", "comp.qcow2", "text.raw", "e.qcow2",
         "v2.qcow2", "rand.raw", "odd.raw", "pm.qcow2", "ovl.qcow2", "zeroalloc.qcow2", "long.qcow2", "short.qcow2", "small.qcow2"];

    [Theory]
    [MemberData(nameof(ConvertCases))]
    public void Convert(string opts, string image)
    {
        using var p = new Pair();
        p.CopyIn(m.Dir, AllInputs);
        string outName = opts.Contains("raw", StringComparison.Ordinal) ? "out.raw" : "out.qcow2";
        var (q, s) = p.Run(["convert", .. opts.Split(' '), image, outName]);
        Differential.AssertSame(q, s);
        AssertSameContent(p, outName);
        // And qemu-img agrees that the result is a sound copy.
        QemuTools.RunIn(p.S.Path, "qemu-img", "compare", image, outName).EnsureSuccess();
        if (outName.EndsWith(".qcow2", StringComparison.Ordinal))
            QemuTools.RunIn(p.S.Path, "qemu-img", "check", outName).EnsureSuccess();
    }

    [Theory]
    [InlineData("-O qcow2 -B base.qcow2 -F qcow2 ovl.qcow2 out.qcow2")]
    [InlineData("-O qcow2 -o backing_file=base.qcow2,backing_fmt=qcow2 ovl.qcow2 out.qcow2")]
    [InlineData("-O qcow2 -B ../base.qcow2 -F qcow2 sub/top.qcow2 out.qcow2")]
    [InlineData("-O qcow2 -B base.qcow2 ovl.qcow2 out.qcow2")]
    [InlineData("-O raw -B base.qcow2 -F qcow2 ovl.qcow2 out.raw")]
    [InlineData("-c -O raw base.qcow2 out.raw")]
    [InlineData("-O qcow2 -o preallocation=metadata -c base.qcow2 out.qcow2")]
    [InlineData("base.qcow2")]
    [InlineData("-n base.qcow2 nonexist.qcow2")]
    [InlineData("-O qcow2 -o foo=1 base.qcow2 out.qcow2")]
    [InlineData("-O qcow2 -o cluster_size=3k base.qcow2 out.qcow2")]
    [InlineData("-O qcow2 -S 100 base.qcow2 out.qcow2")]
    [InlineData("-O qcow2 -S 64k base.qcow2 out.qcow2")]
    [InlineData("-O qcow2 -m 17 base.qcow2 out.qcow2")]
    [InlineData("-O foo base.qcow2 out.qcow2")]
    [InlineData("-z")]
    [InlineData("-O qcow2 -o help")]
    [InlineData("-O qcow2 -B base.qcow2 -F qcow2 base.qcow2 r.raw out.qcow2")]
    [InlineData("-O qcow2 nonexist out.qcow2")]
    [InlineData("-p -O qcow2 base.qcow2 out.qcow2")]
    [InlineData("-p -c -O qcow2 text.raw out.qcow2")]
    [InlineData("-q -O qcow2 base.qcow2 out.qcow2")]
    [InlineData("-O qcow2 -B nonexist.qcow2 -F qcow2 ovl.qcow2 out.qcow2")]
    [InlineData("-O qcow2 -o preallocation=metadata base.qcow2 out.qcow2")]
    [InlineData("-O raw -o preallocation=falloc r.raw out.raw")]
    [InlineData("-O qcow2 base.qcow2 r.raw out.qcow2")]
    [InlineData("-n -O qcow2 base.qcow2 small.qcow2")]
    [InlineData("--target-is-zero -O raw base.qcow2 out.raw")]
    public void ConvertOptions(string args)
    {
        using var p = new Pair();
        p.CopyIn(m.Dir, AllInputs);
        var (q, s) = p.Run(["convert", .. args.Split(' ')]);
        Differential.AssertSame(q, s);
        foreach (var f in new[] { "out.qcow2", "out.raw" })
        {
            Assert.Equal(File.Exists(Path.Combine(p.Q.Path, f)), File.Exists(Path.Combine(p.S.Path, f)));
            if (File.Exists(Path.Combine(p.Q.Path, f)))
                AssertSameContent(p, f);
        }
    }

    [Theory]
    [InlineData("-n base.qcow2 n1.qcow2")]
    [InlineData("-n -O raw base.qcow2 n2.raw")]
    [InlineData("-n -O qcow2 comp.qcow2 n1.qcow2")]
    [InlineData("--target-is-zero -n -O raw base.qcow2 n2.raw")]
    public void ConvertIntoExisting(string args)
    {
        using var p = new Pair();
        p.CopyIn(m.Dir, "base.qcow2", "comp.qcow2");
        foreach (var d in new[] { p.Q.Path, p.S.Path })
        {
            QemuTools.RunIn(d, "qemu-img", "create", "-q", "-f", "qcow2", "n1.qcow2", "64M").EnsureSuccess();
            QemuTools.RunIn(d, "qemu-img", "create", "-q", "-f", "raw", "n2.raw", "64M").EnsureSuccess();
            QemuTools.RunIn(d, "qemu-io", "-f", "raw", "-c", "write -P 0 0 64M", "n2.raw").EnsureSuccess();
        }
        var (q, s) = p.Run(["convert", .. args.Split(' ')]);
        Differential.AssertSame(q, s);
        AssertSameContent(p, "n1.qcow2");
        AssertSameContent(p, "n2.raw");
    }

    [Theory]
    [InlineData("base.qcow2 128M")]
    [InlineData("base.qcow2 32M")]
    [InlineData("--shrink base.qcow2 32M")]
    [InlineData("base.qcow2 +1M")]
    [InlineData("base.qcow2 -- -1M")]
    [InlineData("--shrink base.qcow2 -- -1M")]
    [InlineData("-q base.qcow2 70M")]
    [InlineData("base.qcow2 1000")]
    [InlineData("--preallocation=metadata base.qcow2 70M")]
    [InlineData("--preallocation=xx base.qcow2 70M")]
    [InlineData("base.qcow2")]
    [InlineData("base.qcow2 abc")]
    [InlineData("-f raw r.raw 5M")]
    [InlineData("r.raw 5M")]
    [InlineData("-f raw r.raw 1M")]
    [InlineData("--shrink -f raw r.raw 1M")]
    [InlineData("-z")]
    [InlineData("base.qcow2 +0")]
    [InlineData("base.qcow2 -- -100M")]
    [InlineData("nonexist 1M")]
    [InlineData("--preallocation=metadata -f raw r.raw 8M")]
    [InlineData("--preallocation=full -f raw r.raw 8M")]
    [InlineData("v2.qcow2 2M")]
    [InlineData("--shrink e.qcow2 1M")]
    [InlineData("e.qcow2 200M")]
    [InlineData("--shrink base.qcow2 1000000")]
    [InlineData("--shrink base.qcow2 999999")]
    public void Resize(string args)
    {
        using var p = new Pair();
        p.CopyIn(m.Dir, "base.qcow2", "r.raw", "v2.qcow2", "e.qcow2");
        var (q, s) = p.Run(["resize", .. args.Split(' ')]);
        Differential.AssertSame(q, s);
        foreach (var f in new[] { "base.qcow2", "r.raw", "v2.qcow2", "e.qcow2" })
            AssertSameFile(p, f);
    }

    [Theory]
    [InlineData("leak", "")]
    [InlineData("leak", "--output=json")]
    [InlineData("leak", "-r leaks")]
    [InlineData("leak", "-r all --output=json")]
    [InlineData("leak", "-q -r leaks")]
    [InlineData("corrupt", "")]
    [InlineData("corrupt", "--output=json")]
    [InlineData("corrupt", "-r leaks")]
    [InlineData("corrupt", "-r all")]
    [InlineData("dirty", "")]
    [InlineData("dirty", "-r all")]
    public void CheckRepair(string kind, string opts)
    {
        using var p = new Pair();
        p.CopyIn(m.Dir, "base.qcow2", "dirty.qcow2");
        foreach (var d in new[] { p.Q.Path, p.S.Path })
        {
            if (kind == "dirty")
                continue;
            File.Copy(Path.Combine(d, "base.qcow2"), Path.Combine(d, "x.qcow2"));
            using var f = File.OpenWrite(Path.Combine(d, "x.qcow2"));
            // Refcount block at 0x20000 (16-bit entries): raise two unused clusters (leaks) ...
            f.Position = 0x20000 + 2 * 400;
            f.Write([0, 1, 0, 1]);
            if (kind == "corrupt")
            {
                // ... and drop the refcount of the first data cluster (a corruption).
                f.Position = 0x20000 + 2 * 5;
                f.Write([0, 0]);
            }
        }
        string name = kind == "dirty" ? "dirty.qcow2" : "x.qcow2";
        var (q, s) = p.Run(["check", .. opts.Split(' ', StringSplitOptions.RemoveEmptyEntries), name]);
        Differential.AssertSame(q, s);
        AssertSameFile(p, name);
    }

    [Fact]
    public void CompressedImageReadsBack()
    {
        using var p = new Pair();
        p.CopyIn(m.Dir, "text.raw", "rand.raw");
        QemuTools.StrataImgIn(p.S.Path, "convert", "-c", "-O", "qcow2", "text.raw", "c.qcow2").EnsureSuccess();
        QemuTools.RunIn(p.S.Path, "qemu-img", "compare", "text.raw", "c.qcow2").EnsureSuccess();
        var map = QemuTools.RunIn(p.S.Path, "qemu-img", "map", "--output=json", "c.qcow2").EnsureSuccess();
        Assert.Contains("\"data\": true", map.StdOut);
        Assert.DoesNotContain("offset", map.StdOut); // all clusters compressed
        var info = QemuTools.RunIn(p.S.Path, "qemu-img", "check", "c.qcow2").EnsureSuccess();
        Assert.Contains("100.00% compressed clusters", info.StdOut);
    }
}
