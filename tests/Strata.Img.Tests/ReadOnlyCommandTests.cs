namespace Strata.Img.Tests;

/// <summary>info, check, map and measure on every image of the matrix, byte for byte against qemu-img.</summary>
[Collection("matrix")]
public sealed class ReadOnlyCommandTests(ImageMatrix m)
{
    public static TheoryData<string> Images() => new(ImageMatrix.Images);

    [Theory]
    [MemberData(nameof(Images))]
    public void InfoHuman(string image) => Differential.AssertSame(m.Dir, "info", image);

    [Theory]
    [MemberData(nameof(Images))]
    public void InfoJson(string image) => Differential.AssertSame(m.Dir, "info", "--output=json", image);

    [Theory]
    [MemberData(nameof(Images))]
    public void InfoBackingChain(string image)
    {
        Differential.AssertSame(m.Dir, "info", "--backing-chain", image);
        Differential.AssertSame(m.Dir, "info", "--backing-chain", "--output=json", "-U", image);
    }

    [Theory]
    [MemberData(nameof(Images))]
    public void CheckHuman(string image) => Differential.AssertSame(m.Dir, "check", image);

    [Theory]
    [MemberData(nameof(Images))]
    public void CheckJson(string image) => Differential.AssertSame(m.Dir, "check", "--output=json", image);

    [Theory]
    [MemberData(nameof(Images))]
    public void MapHuman(string image) => Differential.AssertSame(m.Dir, "map", image);

    [Theory]
    [MemberData(nameof(Images))]
    public void MapJson(string image) => Differential.AssertSame(m.Dir, "map", "--output=json", image);

    [Theory]
    [MemberData(nameof(Images))]
    public void MeasureJson(string image)
    {
        Differential.AssertSame(m.Dir, "measure", "--output=json", "-O", "qcow2", image);
        Differential.AssertSame(m.Dir, "measure", "--output=json", image);
        Differential.AssertSame(m.Dir, "measure", "-O", "qcow2", "-o", "cluster_size=4k,refcount_bits=1", image);
        Differential.AssertSame(m.Dir, "measure", "-O", "qcow2", "-o", "compat=0.10", image);
    }

    [Theory]
    [InlineData("map", "--output=json", "--start-offset=1M", "pm.qcow2")]
    [InlineData("map", "--output=json", "--start-offset=1M", "--max-length=64k", "pm.qcow2")]
    [InlineData("map", "--output=json", "--start-offset=100M", "pm.qcow2")]
    [InlineData("map", "--max-length=0", "pm.qcow2")]
    [InlineData("map", "--start-offset=4000k", "--max-length=100k", "sub/top.qcow2")]
    [InlineData("map", "--start-offset=-1", "pm.qcow2")]
    [InlineData("map", "comp.qcow2")]
    [InlineData("measure", "--size", "1G", "-O", "qcow2")]
    [InlineData("measure", "--output=json", "--size", "1G", "-O", "qcow2")]
    [InlineData("measure", "--size", "1G")]
    [InlineData("measure", "--output=json", "-O", "qcow2", "-o", "cluster_size=4k,refcount_bits=1", "--size", "100G")]
    [InlineData("measure", "-O", "qcow2", "-o", "compat=v3", "--size", "1M")]
    [InlineData("measure", "-O", "qcow2", "-o", "compat=0.10,refcount_bits=8", "--size", "1M")]
    [InlineData("measure", "-O", "qcow2", "-o", "preallocation=xx", "--size", "1M")]
    [InlineData("measure", "-O", "qcow2", "-o", "foo=bar", "--size", "1M")]
    [InlineData("measure", "-O", "foo", "--size", "1M")]
    [InlineData("measure", "-O", "qcow2", "-o", "cluster_size=512", "--size", "1025T")]
    [InlineData("measure", "-O", "qcow2", "--size", "1M", "base.qcow2")]
    [InlineData("measure", "-f", "qcow2")]
    [InlineData("measure", "base.qcow2", "v2.qcow2")]
    [InlineData("measure", "-O", "qcow2", "-o", "preallocation=metadata", "--size", "1G")]
    [InlineData("measure", "-O", "qcow2", "-o", "preallocation=full,extended_l2=on", "--size", "1G")]
    [InlineData("measure", "-O", "qcow2", "-o", "extended_l2=on,cluster_size=8k", "--size", "1G")]
    [InlineData("measure", "-O", "qcow2", "-o", "backing_file=x", "base.qcow2")]
    [InlineData("info")]
    [InlineData("info", "-f", "raw", "base.qcow2")]
    [InlineData("info", "nonexist")]
    [InlineData("info", "--output=xml", "base.qcow2")]
    [InlineData("info", "base.qcow2", "r.raw")]
    [InlineData("info", "-z", "base.qcow2")]
    [InlineData("info", "--out", "json", "base.qcow2")]
    [InlineData("info", "sub/top.qcow2", "--backing")]
    [InlineData("info", "-f")]
    [InlineData("check", "r.raw")]
    [InlineData("check", "-r", "foo", "base.qcow2")]
    [InlineData("check", "--output=json", "r.raw")]
    [InlineData("check", "-q", "base.qcow2")]
    [InlineData("foo")]
    public void Misc(params string[] args) => Differential.AssertSame(m.Dir, args);

    /// <summary>qemu-img check opens the backing chain: a missing or unreadable backing file fails the check.</summary>
    [Theory]
    [InlineData("check", "top.qcow2")]
    [InlineData("check", "--output=json", "top.qcow2")]
    [InlineData("check", "-r", "leaks", "top.qcow2")]
    public void Check_WithAMissingBackingFile_FailsAsQemuImg(params string[] args)
    {
        using var dir = new TempDir("check-backing");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", dir.Combine("base.qcow2"), "1M").EnsureSuccess();
        QemuTools.RunIn(dir.Path, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2").EnsureSuccess();
        File.Delete(dir.Combine("base.qcow2"));
        var (q, s) = Differential.Run(dir.Path, args);
        Assert.Equal(1, q.ExitCode);
        Differential.AssertSame(q, s);
    }

    public static TheoryData<string, string> ComparePairs()
    {
        string[] set = ["base.qcow2", "sub/top.qcow2", "chain4.qcow2", "r.raw", "rb.qcow2", "comp.qcow2", "text.raw", "compz.qcow2",
            "odd.raw", "empty.raw", "long.qcow2", "short.qcow2", "pm.qcow2", "e.qcow2", "rand.raw", "comp_rand.qcow2", "ovl.qcow2", "zeroalloc.qcow2"];
        var d = new TheoryData<string, string>();
        foreach (var a in set)
            foreach (var b in set)
                d.Add(a, b);
        return d;
    }

    [Theory]
    [MemberData(nameof(ComparePairs))]
    public void Compare(string a, string b) => Differential.AssertSame(m.Dir, "compare", a, b);

    [Theory]
    [InlineData("-s", "base.qcow2", "ovl.qcow2")]
    [InlineData("-s", "text.raw", "comp.qcow2")]
    [InlineData("-s", "short.qcow2", "long.qcow2")]
    [InlineData("-s", "base.qcow2", "base.qcow2")]
    [InlineData("-p", "base.qcow2", "sub/top.qcow2")]
    [InlineData("-p", "text.raw", "compz.qcow2")]
    [InlineData("-q", "base.qcow2", "sub/top.qcow2")]
    [InlineData("base.qcow2")]
    [InlineData("-f", "raw", "base.qcow2", "base.qcow2")]
    [InlineData("nonexist", "base.qcow2")]
    [InlineData("base.qcow2", "nonexist")]
    [InlineData("-F", "qcow2", "base.qcow2", "r.raw")]
    public void CompareOptions(params string[] args) => Differential.AssertSame(m.Dir, ["compare", .. args]);
}
