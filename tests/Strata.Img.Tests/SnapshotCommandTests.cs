using System.Buffers.Binary;
using Strata.Testing;

namespace Strata.Img.Tests;

/// <summary>
/// strata-img snapshot against qemu-img snapshot: the same sequence of snapshot commands and qemu-io writes on two
/// copies of one image must print the same, exit the same and leave the same bytes on disk (snapshot dates aside);
/// each tool lists, reports (info --output=json) and reads (convert -l) the other's snapshots identically.
/// </summary>
public sealed class SnapshotCommandTests
{
    public static TheoryData<string, bool> Configs() => new()
    {
        { "cluster_size=512", false },
        { "compat=0.10", true },
        { "cluster_size=16384,extended_l2=on,lazy_refcounts=on", true },
    };

    // "io:<qemu-io command>" runs on both copies; the rest are snapshot arguments given to both tools.
    private static readonly string[] Steps =
    [
        "io:write -P 1 0 1M", "io:write -c -P 3 4M 64k", "-c s1", "io:write -P 2 512k 1M", "-c s2", "-c s2",
        "io:write -P 4 0 64k", "-a s1", "io:write -z 128k 64k", "-d s2", "-c s3", "-a 1", "-a nope", "-d nope",
        "-c ", "io:discard 0 64k", "-d s1", "-a s3",
    ];

    [Theory]
    [MemberData(nameof(Configs))]
    public void SnapshotSequence_MatchesQemuImg_ByteForByte(string opts, bool backing)
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("snapcmd");
        string q = dir.Combine("q.qcow2"), s = dir.Combine("s.qcow2");
        var create = new List<string> { "create", "-q", "-f", "qcow2", "-o", opts };
        if (backing)
        {
            QemuTools.QemuImg("create", "-q", "-f", "qcow2", dir.Combine("base.qcow2"), "16M").EnsureSuccess();
            QemuTools.QemuIo("-c", "write -P 9 0 16M", dir.Combine("base.qcow2")).EnsureSuccess();
            create.AddRange(["-b", "base.qcow2", "-F", "qcow2"]);
        }
        QemuTools.RunIn(dir.Path, "qemu-img", [.. create, "q.qcow2", "16M"]).EnsureSuccess();
        File.Copy(q, s);

        foreach (var step in Steps)
        {
            if (step.StartsWith("io:", StringComparison.Ordinal))
            {
                // One cluster per compressed write: qemu-io compresses several in parallel, in no fixed order.
                string io = step[3..].Replace("4M 64k", $"4M {ClusterSize(opts)}");
                QemuTools.QemuIo("-c", io, q).EnsureSuccess();
                QemuTools.QemuIo("-c", io, s).EnsureSuccess();
            }
            else
            {
                string[] args = ["snapshot", "-q", .. step.Split(' ', StringSplitOptions.None).Where((a, i) => a.Length > 0 || step == "-c ")];
                var qr = QemuTools.RunIn(dir.Path, "qemu-img", [.. args, "q.qcow2"]);
                var sr = QemuTools.StrataImgIn(dir.Path, [.. args, "s.qcow2"]);
                Assert.True(qr.ExitCode == sr.ExitCode && Differential.Normalize(qr.StdErr).Replace("q.qcow2", "s.qcow2") == sr.StdErr && qr.StdOut == sr.StdOut,
                    $"{opts}: step '{step}' differs\nqemu-img:\n{qr}\nstrata-img:\n{sr}");
            }
            AssertSameBytes(q, s, $"{opts}, after '{step}'");
        }

        // Each lists and reports the other's image the same way, and reads every snapshot the same.
        foreach (var image in new[] { "q.qcow2", "s.qcow2" })
        {
            Differential.AssertSame(dir.Path, "snapshot", "-l", image);
            Differential.AssertSame(dir.Path, "info", image);
            Differential.AssertSame(dir.Path, "info", "--output=json", "--backing-chain", image);
            Assert.Contains("\"snapshots\"", QemuTools.StrataImgIn(dir.Path, "info", "--output=json", image).StdOut);
        }
        QemuTools.QemuImg("check", s).EnsureSuccess();
        foreach (var name in new[] { "s3", "s2" })
        {
            QemuTools.QemuImg("convert", "-l", $"snapshot.name={name}", "-O", "raw", q, dir.Combine("q.raw")).EnsureSuccess();
            QemuTools.QemuImg("convert", "-l", $"snapshot.name={name}", "-O", "raw", s, dir.Combine("s.raw")).EnsureSuccess();
            Assert.True(File.ReadAllBytes(dir.Combine("q.raw")).AsSpan().SequenceEqual(File.ReadAllBytes(dir.Combine("s.raw"))), $"{opts}: snapshot {name} reads differently");
        }
    }

    [Fact]
    public void ManySnapshotsMadeByQemu_AreListedAppliedAndDeletedAsQemuDoes()
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("snapmany");
        string q = dir.Combine("q.qcow2"), s = dir.Combine("s.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", q, "4M").EnsureSuccess();
        for (int i = 0; i < 14; i++)
        {
            QemuTools.QemuIo("-c", $"write -P {i + 1} {i * 65536} 65536", q).EnsureSuccess();
            QemuTools.QemuImg("snapshot", "-c", i % 7 == 0 ? "" : $"snap {i} \u00e9t\u00e9 with a rather long name", q).EnsureSuccess();
        }
        File.Copy(q, s);
        Differential.AssertSame(dir.Path, "snapshot", "-l", "q.qcow2");
        Differential.AssertSame(dir.Path, "info", "--output=json", "q.qcow2");
        foreach (var step in new[] { "-a 9", "-d snap 3 \u00e9t\u00e9 with a rather long name", "-a ", "-d ", "-a 14", "-d 1" })
        {
            string[] args = ["snapshot", step[..2], step[3..]];
            var qr = QemuTools.RunIn(dir.Path, "qemu-img", [.. args, "q.qcow2"]);
            var sr = QemuTools.StrataImgIn(dir.Path, ["snapshot", "-q", .. args[1..], "s.qcow2"]);
            Assert.True(qr.ExitCode == sr.ExitCode && qr.StdOut == sr.StdOut, $"step '{step}'\nqemu-img:\n{qr}\nstrata-img:\n{sr}");
            AssertSameBytes(q, s, $"after '{step}'");
        }
    }

    [Fact]
    public void Extensions_AutoNamesAreUnique_DeleteTakesAnId_AndSaysWhatItRemoved()
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("snapext");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", dir.Combine("a.qcow2"), "1M").EnsureSuccess();
        var a = QemuTools.StrataImgIn(dir.Path, "snapshot", "-C", "a.qcow2").EnsureSuccess();
        var b = QemuTools.StrataImgIn(dir.Path, "snapshot", "-C", "a.qcow2").EnsureSuccess();
        Assert.Matches(@"^Created snapshot 'snap-\d{8}-\d{6}(-\d+)?'\n$", a.StdOut);
        Assert.NotEqual(a.StdOut, b.StdOut);
        var list = QemuTools.QemuImg("snapshot", "-l", dir.Combine("a.qcow2")).EnsureSuccess().StdOut;
        Assert.Equal(2, list.Split('\n').Count(l => l.Contains(" snap-", StringComparison.Ordinal)));

        // An ID qemu-img would not find, with the removed snapshot named; -q keeps it quiet.
        var d = QemuTools.StrataImgIn(dir.Path, "snapshot", "-d", "2", "a.qcow2").EnsureSuccess();
        Assert.StartsWith("Deleted snapshot 'snap-", d.StdOut);
        Assert.EndsWith("(ID 2)\n", d.StdOut);
        Assert.Equal("", QemuTools.StrataImgIn(dir.Path, "snapshot", "-q", "-d", "1", "a.qcow2").EnsureSuccess().StdOut);
        QemuTools.QemuImg("check", dir.Combine("a.qcow2")).EnsureSuccess();
        Assert.Equal("", QemuTools.QemuImg("snapshot", "-l", dir.Combine("a.qcow2")).EnsureSuccess().StdOut);
    }

    [Theory]
    [InlineData("compat=1.1")]
    [InlineData("compat=0.10")]
    public void ApplyAfterResize_MatchesQemuImg(string opts)
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("snapresize");
        string q = dir.Combine("q.qcow2"), s = dir.Combine("s.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", "-o", opts, q, "8M").EnsureSuccess();
        QemuTools.QemuIo("-c", "write -P 7 7M 1M", q).EnsureSuccess();
        QemuTools.QemuImg("snapshot", "-c", "small", q).EnsureSuccess();
        File.Copy(q, s);
        foreach (var args in new[] { new[] { "resize", "q.qcow2", "24M" }, ["resize", "--shrink", "q.qcow2", "4M"] })
            Differential.AssertSame(dir.Path, args); // the same file: v2 refuses, v3 resizes
        File.Copy(q, s, overwrite: true);
        QemuTools.QemuImg("snapshot", "-c", "other", q).EnsureSuccess();
        QemuTools.StrataImgIn(dir.Path, "snapshot", "-c", "other", "s.qcow2").EnsureSuccess();
        var qr = QemuTools.RunIn(dir.Path, "qemu-img", "snapshot", "-a", "small", "q.qcow2");
        var sr = QemuTools.StrataImgIn(dir.Path, "snapshot", "-a", "small", "s.qcow2");
        Assert.Equal(qr.ExitCode, sr.ExitCode);
        Assert.Equal(Differential.Normalize(qr.StdErr).Replace("q.qcow2", "s.qcow2"), sr.StdErr);
        Differential.AssertSame(dir.Path, "info", "--output=json", "q.qcow2");
        Assert.Equal(QemuTools.QemuImg("info", "--output=json", q).StdOut.Split('\n').First(l => l.Contains("virtual-size")),
            QemuTools.QemuImg("info", "--output=json", s).StdOut.Split('\n').First(l => l.Contains("virtual-size")));
        QemuTools.QemuImg("convert", "-O", "raw", q, dir.Combine("q.raw")).EnsureSuccess();
        QemuTools.QemuImg("convert", "-O", "raw", s, dir.Combine("s.raw")).EnsureSuccess();
        Assert.True(File.ReadAllBytes(dir.Combine("q.raw")).AsSpan().SequenceEqual(File.ReadAllBytes(dir.Combine("s.raw"))));
        QemuTools.QemuImg("check", s).EnsureSuccess();
    }

    [Fact]
    public async Task VmStateClockIcountAndUnknownExtraData_AreShownAsQemuShowsThem_AndSurviveARewrite()
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("snapfields");
        string img = dir.Combine("f.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", img, "4M").EnsureSuccess();
        QemuTools.QemuImg("snapshot", "-c", "a", img).EnsureSuccess();
        QemuTools.QemuImg("snapshot", "-c", "b", img).EnsureSuccess();

        // What a VM's savevm leaves (state size, guest clock, no icount) and extra data from a newer writer.
        List<Strata.Images.Qcow2.Qcow2Snapshot> list;
        long offset;
        await using (var f = Strata.Images.Storage.FileStorage.Open(img, Strata.Images.Storage.FileStorageOptions.Default))
        {
            var hdr = new byte[72];
            await f.ReadAsync(hdr, 0);
            offset = (long)BinaryPrimitives.ReadUInt64BigEndian(hdr.AsSpan(64));
            list = (await Strata.Images.Qcow2.SnapshotTable.ReadAsync(f, offset, 2, 4 << 20)).Snapshots;
            list[0].VmStateSize = 5_000_000_123;
            list[0].VmClockNanoseconds = 3_725_500_000_000; // 01:02:05.500
            list[0].Icount = ulong.MaxValue;
            list[1].VmStateSize = 70_000;
            list[1].VmClockNanoseconds = 400_000_000_000_000; // more than 99 hours
            list[1].Icount = 123_456_789;
            list[1].UnknownExtraData = [1, 2, 3, 4, 5, 6, 7, 8, 9];
            await f.WriteAsync(Strata.Images.Qcow2.SnapshotTable.Serialize(list), offset);
            await f.FlushAsync();
        }
        Differential.AssertSame(dir.Path, "snapshot", "-l", "f.qcow2");
        Differential.AssertSame(dir.Path, "info", "f.qcow2");
        Differential.AssertSame(dir.Path, "info", "--output=json", "f.qcow2");

        // strata-img rewrites the table: every field of the old entries stays, and qemu-img still agrees.
        QemuTools.StrataImgIn(dir.Path, "snapshot", "-c", "c", "f.qcow2").EnsureSuccess();
        QemuTools.QemuImg("check", img).EnsureSuccess();
        await using (var f = Strata.Images.Storage.FileStorage.Open(img, Strata.Images.Storage.FileStorageOptions.Default))
        {
            var hdr = new byte[72];
            await f.ReadAsync(hdr, 0);
            var after = (await Strata.Images.Qcow2.SnapshotTable.ReadAsync(f, (long)BinaryPrimitives.ReadUInt64BigEndian(hdr.AsSpan(64)), 3, 4 << 20)).Snapshots;
            Assert.Equal(Strata.Images.Qcow2.SnapshotTable.Serialize(list), Strata.Images.Qcow2.SnapshotTable.Serialize(after.Take(2).ToList()));
        }
        Differential.AssertSame(dir.Path, "snapshot", "-l", "f.qcow2");
        Differential.AssertSame(dir.Path, "info", "--output=json", "f.qcow2");
    }

    [Theory]
    [InlineData("7x", "abc")]
    [InlineData(" 12", "+3")]
    [InlineData("-1", "2")]
    [InlineData("99999999999999999999999", "1")]
    public async Task NewIds_FollowQemusStrtoulRule(string id0, string id1)
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("snapids");
        string q = dir.Combine("q.qcow2"), s = dir.Combine("s.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", q, "1M").EnsureSuccess();
        QemuTools.QemuImg("snapshot", "-c", "a", q).EnsureSuccess();
        QemuTools.QemuImg("snapshot", "-c", "b", q).EnsureSuccess();
        await using (var f = Strata.Images.Storage.FileStorage.Open(q, Strata.Images.Storage.FileStorageOptions.Default))
        {
            var hdr = new byte[72];
            await f.ReadAsync(hdr, 0);
            long offset = (long)BinaryPrimitives.ReadUInt64BigEndian(hdr.AsSpan(64));
            var list = (await Strata.Images.Qcow2.SnapshotTable.ReadAsync(f, offset, 2, 1 << 20)).Snapshots;
            list[0].Id = id0;
            list[1].Id = id1;
            await f.WriteAsync(Strata.Images.Qcow2.SnapshotTable.Serialize(list), offset);
        }
        File.Copy(q, s);
        QemuTools.RunIn(dir.Path, "qemu-img", "snapshot", "-c", "c", "q.qcow2").EnsureSuccess();
        QemuTools.StrataImgIn(dir.Path, "snapshot", "-c", "c", "s.qcow2").EnsureSuccess();
        AssertSameBytes(q, s, $"IDs '{id0}', '{id1}'");
        Differential.AssertSame(dir.Path, "snapshot", "-l", "s.qcow2");
    }

    [Fact]
    public void ConvertAndMeasureWithSnapshot_MatchQemuImg()
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("snapconv");
        string img = dir.Combine("m.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", img, "8M").EnsureSuccess();
        QemuTools.QemuIo("-c", "write -P 1 0 1M", img).EnsureSuccess();
        QemuTools.QemuImg("snapshot", "-c", "one", img).EnsureSuccess();
        QemuTools.QemuIo("-c", "write -P 2 512k 3M", "-c", "write -z 6M 1M", img).EnsureSuccess();
        QemuTools.QemuImg("snapshot", "-c", "2", img).EnsureSuccess(); // a name that is also an ID
        QemuTools.QemuIo("-c", "write -P 3 0 8M", img).EnsureSuccess();
        foreach (var l in new[] { "2", "1", "snapshot.name=one", "snapshot.id=1,snapshot.name=2", "snapshot.foo=1", "nope" })
        {
            var (q, s) = Differential.Run(dir.Path, dir.Path, "convert", "-l", l, "-O", "qcow2", "m.qcow2", "out.qcow2");
            Differential.AssertSame(q, s);
            if (q.ExitCode == 0)
            {
                QemuTools.RunIn(dir.Path, "qemu-img", "convert", "-l", l, "-O", "raw", "m.qcow2", "q.raw").EnsureSuccess();
                QemuTools.StrataImgIn(dir.Path, "convert", "-l", l, "-O", "raw", "m.qcow2", "s.raw").EnsureSuccess();
                Assert.True(File.ReadAllBytes(dir.Combine("q.raw")).AsSpan().SequenceEqual(File.ReadAllBytes(dir.Combine("s.raw"))), $"convert -l {l}");
            }
            Differential.AssertSame(dir.Path, "measure", "--output=json", "-l", l, "-O", "qcow2", "m.qcow2");
        }
        Differential.AssertSame(dir.Path, "convert", "-l", "one", "-O", "raw", "m.qcow2", "m.qcow2", "x.raw");
        Differential.AssertSame(dir.Path, "measure", "-l", "one", "--size", "1M");
    }

    [Theory]
    [InlineData("snapshot")]
    [InlineData("snapshot", "-l")]
    [InlineData("snapshot", "-l", "-a", "x")]
    [InlineData("snapshot", "-c")]
    [InlineData("snapshot", "-f", "qcow2", "-l")]
    [InlineData("snapshot", "-z")]
    [InlineData("snapshot", "-U", "-c", "x")]
    [InlineData("snapshot", "-U", "-l")]
    [InlineData("snapshot", "-l", "extra")]
    [InlineData("snapshot", "-c", "x", "--image-opts", "driver=qcow2,file.filename=a.qcow2")]
    [InlineData("snapshot", "-l", "missing.qcow2")]
    [InlineData("snapshot", "-l", "r.img")]
    [InlineData("snapshot", "-c", "x", "r.img")]
    [InlineData("snapshot", "-a", "x", "r.img")]
    [InlineData("snapshot", "-d", "x", "r.img")]
    public void Usage_MatchesQemuImg(params string[] args)
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("snapuse");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", dir.Combine("a.qcow2"), "1M").EnsureSuccess();
        QemuTools.QemuImg("create", "-q", "-f", "raw", dir.Combine("r.img"), "1M").EnsureSuccess();
        bool named = args.Length > 0 && (args[^1].Contains('.') || args.Contains("--image-opts"));
        Differential.AssertSame(dir.Path, named ? args : [.. args, "a.qcow2"]);
    }

    private static int ClusterSize(string opts) =>
        opts.Split(',').FirstOrDefault(o => o.StartsWith("cluster_size=", StringComparison.Ordinal)) is { } c ? int.Parse(c[13..]) : 65536;

    /// <summary>Both files are the same except the snapshot entries' dates (the tools ran at different moments).</summary>
    private static void AssertSameBytes(string a, string b, string what)
    {
        var x = MaskDates(File.ReadAllBytes(a));
        var y = MaskDates(File.ReadAllBytes(b));
        Assert.True(x.Length == y.Length, $"{what}: file lengths {x.Length} and {y.Length}");
        int i = x.AsSpan().CommonPrefixLength(y);
        Assert.True(i == x.Length, $"{what}: files differ first at 0x{i:x}");
    }

    private static byte[] MaskDates(byte[] d)
    {
        int count = (int)BinaryPrimitives.ReadUInt32BigEndian(d.AsSpan(60));
        long p = (long)BinaryPrimitives.ReadUInt64BigEndian(d.AsSpan(64));
        for (int i = 0; i < count; i++)
        {
            p = (p + 7) & ~7L;
            int idLen = BinaryPrimitives.ReadUInt16BigEndian(d.AsSpan((int)p + 12));
            int nameLen = BinaryPrimitives.ReadUInt16BigEndian(d.AsSpan((int)p + 14));
            int extra = (int)BinaryPrimitives.ReadUInt32BigEndian(d.AsSpan((int)p + 36));
            d.AsSpan((int)p + 16, 8).Clear();
            p += 40 + extra + idLen + nameLen;
        }
        return d;
    }
}
