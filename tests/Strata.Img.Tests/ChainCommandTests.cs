using System.Collections.Concurrent;

namespace Strata.Img.Tests;

/// <summary>
/// rebase, commit and amend against qemu-img: the same chain is copied for each tool, each runs the same command,
/// and then the outputs and exit codes, the guest contents (qemu-img compare), qemu-img check, info and map of every
/// image must agree; finally each tool works on what the other wrote. Chains hold data, zero clusters and compressed
/// clusters in every layer, over several geometries.
/// </summary>
public sealed class ChainCommandTests
{
    /// <summary>Geometries: the options every image of the chain is created with.</summary>
    private static readonly Dictionary<string, string[]> Configs = new()
    {
        ["v3"] = [],
        ["v2"] = ["-o", "compat=0.10"],
        ["extl2"] = ["-o", "extended_l2=on"],
        ["c4k"] = ["-o", "cluster_size=4096"],
        ["prealloc"] = ["-o", "extended_l2=on,preallocation=metadata"],
        ["c512"] = ["-o", "cluster_size=512,refcount_bits=8"],
    };

    private static readonly ConcurrentDictionary<string, Lazy<string>> Templates = new();

    /// <summary>base ← mid ← top (4 MiB), and a standalone "other", built once per geometry with qemu-img and qemu-io.</summary>
    private static string Template(string config) => Templates.GetOrAdd(config, c => new Lazy<string>(() =>
    {
        var dir = Path.Combine(TempDir.Root, $"chain-tpl-{Environment.ProcessId}-{c}");
        if (Directory.Exists(dir))
            Directory.Delete(dir, true);
        Directory.CreateDirectory(dir);
        string[] o = Configs[c];
        string comp = c == "prealloc" ? "" : "-c ";
        void Img(params string[] a) => QemuTools.RunIn(dir, "qemu-img", a).EnsureSuccess();
        void Io(string file, params string[] cmds) =>
            QemuTools.RunIn(dir, "qemu-io", [.. cmds.SelectMany(x => new[] { "-c", x }), file]).EnsureSuccess();
        Img(["create", "-q", "-f", "qcow2", .. o, "base.qcow2", "4M"]);
        Io("base.qcow2", "write -P 1 0 1M", $"write {comp}-P 11 1M 64k", "write -P 12 3584k 512k");
        Img(["create", "-q", "-f", "qcow2", .. o, "-b", "base.qcow2", "-F", "qcow2", "mid.qcow2"]);
        Io("mid.qcow2", "write -P 2 1M 1M", "write -z 0 64k", "write -P 21 3200k 4k");
        Img(["create", "-q", "-f", "qcow2", .. o, "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2"]);
        Io("top.qcow2", "write -P 3 2M 512k", "write -z 512k 64k", "write -P 4 3M 4k", $"write {comp}-P 5 64k 64k", "write -z 3600k 8k");
        Img(["create", "-q", "-f", "qcow2", .. o, "other.qcow2", "4M"]);
        Io("other.qcow2", "write -P 1 0 512k", "write -P 9 3M 1M");
        return dir;
    })).Value;

    private static readonly string[] Files = ["base.qcow2", "mid.qcow2", "top.qcow2", "other.qcow2"];

    private sealed class Pair : IDisposable
    {
        public TempDir Q { get; } = new("cq");
        public TempDir S { get; } = new("cs");

        public Pair(string config)
        {
            foreach (var f in Files)
            {
                File.Copy(Path.Combine(Template(config), f), Q.Combine(f));
                File.Copy(Path.Combine(Template(config), f), S.Combine(f));
            }
        }

        public void Dispose()
        {
            Q.Dispose();
            S.Dispose();
        }
    }

    /// <summary>(geometry, command, the images it may change, the one among them whose host layout may legitimately differ from QEMU's, or "").</summary>
    public static TheoryData<string, string[], string[], string> Cases()
    {
        var d = new TheoryData<string, string[], string[], string>();
        d.Add("v3", ["rebase", "-b", "other.qcow2", "-F", "qcow2", "top.qcow2"], ["top.qcow2"], "");
        d.Add("v3", ["rebase", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"], ["top.qcow2"], "");
        d.Add("v3", ["rebase", "-u", "-b", "other.qcow2", "-F", "qcow2", "top.qcow2"], ["top.qcow2"], "");
        d.Add("v3", ["rebase", "-b", "other.qcow2", "top.qcow2"], ["top.qcow2"], "");
        d.Add("v3", ["rebase", "-p", "-b", "", "-f", "qcow2", "mid.qcow2"], ["mid.qcow2"], "");
        d.Add("v3", ["rebase", "-q", "-t", "none", "-T", "writeback", "-b", "other.qcow2", "-F", "qcow2", "mid.qcow2"], ["mid.qcow2"], "");
        // The commit target's layout depends on the order in which QEMU's parallel copy requests complete.
        d.Add("v3", ["commit", "-d", "top.qcow2"], ["top.qcow2", "mid.qcow2"], "mid.qcow2");
        d.Add("v3", ["commit", "-q", "mid.qcow2"], ["mid.qcow2", "base.qcow2"], "base.qcow2");
        d.Add("v3", ["amend", "-o", "refcount_bits=64,lazy_refcounts=on", "mid.qcow2"], ["mid.qcow2"], "");
        d.Add("v3", ["amend", "-o", "size=8M", "-o", "compat=0.10", "top.qcow2"], ["top.qcow2"], "");
        foreach (var c in new[] { "v3", "v2", "extl2", "c4k", "prealloc", "c512" })
        {
            if (c != "prealloc")
                d.Add(c, ["rebase", "-b", "", "top.qcow2"], ["top.qcow2"], "");
            d.Add(c, ["commit", "top.qcow2"], ["top.qcow2", "mid.qcow2"], "mid.qcow2");
            if (c is "v3" or "v2" or "c4k")
                d.Add(c, ["commit", "-b", "base.qcow2", "top.qcow2"], ["base.qcow2"], "base.qcow2");
            d.Add(c, c == "v2" ? ["amend", "-o", "compat=1.1,lazy_refcounts=on", "top.qcow2"] : ["amend", "-o", "compat=0.10", "top.qcow2"], ["top.qcow2"], "");
        }
        d.Add("v2", ["amend", "-o", "refcount_bits=8", "top.qcow2"], ["top.qcow2"], "");
        d.Add("c4k", ["amend", "-o", "refcount_bits=2", "top.qcow2"], ["top.qcow2"], "");
        d.Add("prealloc", ["rebase", "-b", "other.qcow2", "-F", "qcow2", "top.qcow2"], ["top.qcow2"], "");
        return d;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void SameResultAsQemuImg(string config, string[] args, string[] changed, string layoutFree)
    {
        QemuTools.RequireTools();
        using var p = new Pair(config);
        var (q, s) = Differential.Run(p.Q.Path, p.S.Path, args);
        Differential.AssertSame(q, s);

        foreach (var f in Files)
        {
            string qf = p.Q.Combine(f), sf = p.S.Combine(f);
            if (!changed.Contains(f))
            {
                Assert.True(File.ReadAllBytes(qf).AsSpan().SequenceEqual(File.ReadAllBytes(sf)), $"{f} should not have changed");
                continue;
            }
            var cmp = QemuTools.QemuImg("compare", qf, sf);
            Assert.True(cmp.ExitCode == 0, $"{f}: guest contents differ after {string.Join(' ', args)}\n{cmp}");
            var check = QemuTools.RunIn(p.S.Path, "qemu-img", "check", f);
            Assert.True(check.ExitCode == 0, $"{f}: qemu-img check of strata-img's result\n{check}");
            string qi = InfoWithoutSizes(p.Q.Path, f), si = InfoWithoutSizes(p.S.Path, f);
            Assert.True(qi == si, $"{f}: info differs\nqemu-img:\n{qi}\nstrata-img:\n{si}");
            if (f == layoutFree)
                continue;
            // Layers above a layout-free image show its host offsets in their map: compare their own extents then.
            bool ownOnly = layoutFree != "" && Array.IndexOf(Files, f) > Array.IndexOf(Files, layoutFree);
            string qm = Map(p.Q.Path, f, ownOnly), sm = Map(p.S.Path, f, ownOnly);
            Assert.True(qm == sm, $"{f}: map differs after {string.Join(' ', args)}\nqemu-img:\n{qm}\nstrata-img:\n{sm}");
            Assert.Equal(new FileInfo(qf).Length, new FileInfo(sf).Length);
        }

        // Each tool then works on what the other one wrote: flatten the top with the other tool.
        if (s.ExitCode == 0)
        {
            var qOnS = QemuTools.RunIn(p.S.Path, "qemu-img", "rebase", "-b", "", "top.qcow2");
            var sOnQ = QemuTools.StrataImgIn(p.Q.Path, "rebase", "-b", "", "top.qcow2");
            Assert.True(qOnS.ExitCode == 0 && sOnQ.ExitCode == 0, $"cross rebase:\n{qOnS}\n{sOnQ}");
            Assert.Equal(0, QemuTools.QemuImg("compare", p.Q.Combine("top.qcow2"), p.S.Combine("top.qcow2")).ExitCode);
            Assert.Equal(0, QemuTools.RunIn(p.Q.Path, "qemu-img", "check", "top.qcow2").ExitCode);
        }
    }

    private static string InfoWithoutSizes(string dir, string f)
    {
        var r = QemuTools.RunIn(dir, "qemu-img", "info", "--output=json", "--backing-chain", f).EnsureSuccess();
        return string.Join('\n', r.StdOut.Split('\n').Where(l => !l.Contains("\"actual-size\"", StringComparison.Ordinal)));
    }

    private static string Map(string dir, string f, bool ownOnly)
    {
        var r = QemuTools.RunIn(dir, "qemu-img", "map", "--output=json", f).EnsureSuccess();
        if (!ownOnly)
            return r.StdOut;
        return string.Join('\n', r.StdOut.Split('\n').Where(l => l.Contains("\"depth\": 0", StringComparison.Ordinal)));
    }

    /// <summary>Argument and state errors: the same messages and exit codes as qemu-img (state checked by compare).</summary>
    public static TheoryData<string[]> ErrorCases() => new(
        ["rebase"],
        ["rebase", "top.qcow2"],
        ["rebase", "-b", "a", "-F", "qcow2", "top.qcow2", "extra"],
        ["rebase", "-t", "foo", "-u", "-b", "x", "-F", "qcow2", "top.qcow2"],
        ["rebase", "-T", "foo", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"],
        ["rebase", "-b", "nonexist", "-F", "qcow2", "top.qcow2"],
        ["rebase", "-u", "-b", "nonexist", "top.qcow2"],
        ["rebase", "-u", "-b", "x", "-F", "foo", "top.qcow2"],
        ["rebase", "-u", "-b", "x", "-F", "qcow2", "nonexist.qcow2"],
        ["rebase", "-f", "raw", "-u", "-b", "x", "-F", "raw", "top.qcow2"],
        ["rebase", "-u", "-b", new string('a', 1100), "-F", "qcow2", "top.qcow2"],
        ["rebase", "-u", "-b", new string('b', 1000), "-F", "qcow2", "top.qcow2"],
        ["rebase", "-u", "top.qcow2"],
        ["rebase", "-u", "-b", "", "-F", "qcow2", "top.qcow2"],
        ["commit"],
        ["commit", "-b", "nonexist", "top.qcow2"],
        ["commit", "-b", "top.qcow2", "top.qcow2"],
        ["commit", "base.qcow2"],
        ["commit", "-r", "1x", "top.qcow2"],
        ["amend", "top.qcow2"],
        ["amend", "-o", "cluster_size=4k", "top.qcow2"],
        ["amend", "-o", "encrypt.format=luks", "top.qcow2"],
        ["amend", "-o", "backing_file=x", "top.qcow2"],
        ["amend", "-o", "backing_file=mid.qcow2,backing_fmt=qcow2", "top.qcow2"],
        ["amend", "-o", "backing_file=mid.qcow2", "top.qcow2"],
        ["amend", "-o", "data_file=x", "top.qcow2"],
        ["amend", "-o", "data_file_raw=on", "top.qcow2"],
        ["amend", "-o", "foo=bar", "top.qcow2"],
        ["amend", "-o", "compat=0.9", "top.qcow2"],
        ["amend", "-o", "lazy_refcounts=maybe", "top.qcow2"],
        ["amend", "-o", "refcount_bits=3", "top.qcow2"],
        ["amend", "-o", "compat=0.10,refcount_bits=8", "top.qcow2"],
        ["amend", "-o", "lazy_refcounts=on,compat=0.10", "top.qcow2"],
        ["amend", "-o", "size=1000", "top.qcow2"],
        ["amend", "-o", "help", "top.qcow2"],
        ["amend", "-f", "qcow2", "-o", "help"],
        ["amend", "-f", "raw", "-o", "help"],
        ["amend", "-o", "compat=0.10", "nonexist.qcow2"],
        ["amend", "-f", "raw", "-o", "size=8M", "top.qcow2"]
    );

    [Theory]
    [MemberData(nameof(ErrorCases))]
    public void ErrorsMatchQemuImg(string[] args)
    {
        QemuTools.RequireTools();
        using var p = new Pair("v3");
        var (q, s) = Differential.Run(p.Q.Path, p.S.Path, args);
        Differential.AssertSame(q, s);
        // Header-only changes are laid out byte for byte as QEMU's; refused commands change nothing.
        foreach (var f in Files)
            Assert.True(File.ReadAllBytes(p.Q.Combine(f)).AsSpan().SequenceEqual(File.ReadAllBytes(p.S.Combine(f))), $"{f} differs after {string.Join(' ', args)}");
    }

    /// <summary>Relative backing names stay as given and resolve against the overlay's directory, not the working directory.</summary>
    [Fact]
    public void RelativeBackingNames_ResolveAgainstTheOverlay()
    {
        QemuTools.RequireTools();
        using var p = new Pair("v3");
        foreach (var root in new[] { p.Q.Path, p.S.Path })
        {
            Directory.CreateDirectory(Path.Combine(root, "sub"));
            File.Move(Path.Combine(root, "top.qcow2"), Path.Combine(root, "sub", "top.qcow2"));
            File.Move(Path.Combine(root, "other.qcow2"), Path.Combine(root, "sub", "other.qcow2"));
            QemuTools.RunIn(root, "qemu-img", "rebase", "-u", "-b", "../mid.qcow2", "-F", "qcow2", "sub/top.qcow2").EnsureSuccess();
        }
        var (q, s) = Differential.Run(p.Q.Path, p.S.Path, "rebase", "-b", "other.qcow2", "-F", "qcow2", "sub/top.qcow2");
        Differential.AssertSame(q, s);
        Assert.Equal(0, q.ExitCode);
        Assert.Equal(0, QemuTools.QemuImg("compare", p.Q.Combine("sub", "top.qcow2"), p.S.Combine("sub", "top.qcow2")).ExitCode);
        string qi = QemuTools.RunIn(p.Q.Path, "qemu-img", "info", "--output=json", "sub/top.qcow2").EnsureSuccess().StdOut;
        string si = QemuTools.RunIn(p.S.Path, "qemu-img", "info", "--output=json", "sub/top.qcow2").EnsureSuccess().StdOut;
        Assert.Contains("\"backing-filename\": \"other.qcow2\"", si);
        Assert.Equal(qi.Split('\n').Where(l => !l.Contains("actual-size")), si.Split('\n').Where(l => !l.Contains("actual-size")));
        // commit -b with a name relative to the overlay's directory.
        var (qc, sc) = Differential.Run(p.Q.Path, p.S.Path, "commit", "-b", "other.qcow2", "sub/top.qcow2");
        Differential.AssertSame(qc, sc);
        Assert.Equal(0, QemuTools.QemuImg("compare", p.Q.Combine("sub", "other.qcow2"), p.S.Combine("sub", "other.qcow2")).ExitCode);
    }
}
