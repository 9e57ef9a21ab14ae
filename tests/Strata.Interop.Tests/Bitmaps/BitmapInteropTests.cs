using System.Diagnostics;
using System.Globalization;
using Strata.Images.Format;
using Strata.Images.Qcow2;
using Xunit;

namespace Strata.Interop.Tests.Bitmaps;

/// <summary>
/// Persistent dirty bitmaps against QEMU both ways: the same guest writes through qemu-io and through Strata's
/// library set the same bits (as qemu-nbd serves them), bitmaps each side stores are read identically by the other,
/// and images stay clean for qemu-img check.
/// </summary>
public sealed class BitmapInteropTests
{
    [Theory]
    [InlineData("cluster_size=65536", 65536, 64L << 20)]
    [InlineData("cluster_size=65536", 512, (16L << 20) + 1536)]
    [InlineData("cluster_size=512", 512, 8L << 20)]
    [InlineData("cluster_size=2M", 1L << 30, 3L << 30)]
    [InlineData("extended_l2=on,cluster_size=128k", 16384, 40L << 20)]
    public async Task GuestWrites_SetTheBitsQemuSets(string opts, long granularity, long size)
    {
        QemuTools.RequireTools("qemu-img", "qemu-io", "qemu-nbd", "nbdinfo");
        using var dir = new TempDir("bm-writes");
        string baseImg = dir.Combine("base.qcow2"), a = dir.Combine("a.qcow2"), b = dir.Combine("b.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", "-o", opts, baseImg, size.ToString(CultureInfo.InvariantCulture)).EnsureSuccess();
        QemuTools.QemuImg("bitmap", "--add", "-g", granularity.ToString(CultureInfo.InvariantCulture), baseImg, "on").EnsureSuccess();
        QemuTools.QemuImg("bitmap", "--add", "--disable", baseImg, "off").EnsureSuccess();
        // Bits set before: "off" keeps them, "on" must keep and add.
        QemuTools.QemuIo("-f", "qcow2", "-c", $"write -P 1 {size / 3} 5000", "-c", "write -P 2 0 1", baseImg).EnsureSuccess();
        QemuTools.QemuImg("bitmap", "--add", "-g", "8192", baseImg, "later").EnsureSuccess();
        File.Copy(baseImg, a);
        File.Copy(baseImg, b);

        var rnd = new Random((int)(granularity ^ size));
        var ops = new List<(char Kind, long Offset, long Length)>();
        for (int i = 0; i < 25; i++)
        {
            long off = (long)(rnd.NextDouble() * size);
            long len = Math.Min(size - off, rnd.Next(3) == 0 ? rnd.Next(1, 300) : rnd.Next(1, 3 << 20));
            ops.Add(("wzd"[rnd.Next(3)], off, Math.Max(1, len)));
        }
        var args = new List<string> { "-f", "qcow2", "-d", "unmap" };
        foreach (var (k, off, len) in ops)
            args.AddRange(["-c", k switch { 'w' => $"write -P 0x5a {off} {len}", 'z' => $"write -z {off} {len}", _ => $"discard {off} {len}" }]);
        args.Add(a);
        QemuTools.QemuIo([.. args]).EnsureSuccess();

        await using (var img = (Qcow2Image)await ImageOpener.OpenAsync(b, new ImageOpenOptions { Format = "qcow2" }))
        {
            Assert.True(img.DirtyBitmaps.HasEnabled);
            // While open read-write, the bitmaps are marked in use on disk, as QEMU does.
            Assert.Equal(["later", "off", "on"], BitmapOracle.InUseNames(b).Order());
            var data = new byte[3 << 20];
            Array.Fill(data, (byte)0x5a);
            foreach (var (k, off, len) in ops)
            {
                if (k == 'w')
                    await img.WriteAsync(data.AsMemory(0, (int)len), off);
                else if (k == 'z')
                    await img.WriteZeroesAsync(off, len);
                else
                    await img.DiscardAsync(off, len);
            }
        }
        BitmapOracle.AssertCheckClean(b);
        Assert.Empty(BitmapOracle.InUseNames(b));
        Assert.Equal(0, QemuTools.QemuImg("compare", "-f", "qcow2", "-F", "qcow2", a, b).ExitCode);
        await BitmapOracle.AssertSameBitmapsAsync(a, b);
        Assert.NotEmpty(BitmapOracle.QemuDirty(b, "on"));
    }

    /// <summary>
    /// strata-img bitmap against qemu-img bitmap: each scenario runs the same command lines on two copies (in
    /// directories of their own, so the messages name the same files); stdout, stderr and exit codes must match,
    /// and so must the resulting bitmaps as QEMU and Strata read them.
    /// </summary>
    [Fact]
    public async Task BitmapCommand_MatchesQemuImg()
    {
        QemuTools.RequireTools("qemu-img", "qemu-io", "qemu-nbd", "nbdinfo");
        string longName = new('n', 1023);
        string[][] scenarios =
        [
            ["create:", "bitmap --add img.qcow2 b0", "bitmap --add --disable -g 512 img.qcow2 b1", "bitmap --add img.qcow2 b2 -g 1G --disable",
                "io:write 0 4k", "io:write 1M 100", "info img.qcow2", "info --output=json img.qcow2", "bitmap --add img.qcow2 b0",
                "bitmap --clear img.qcow2 nosuch", "bitmap img.qcow2 b0", "bitmap --add -g 1000 img.qcow2 b5", "bitmap --add -g 256 img.qcow2 b5",
                "bitmap --add -g 4G img.qcow2 b5", "bitmap --add -g abc img.qcow2 b5", "bitmap --remove -g 1024 img.qcow2 b5",
                "bitmap -F qcow2 --clear img.qcow2 b0", "bitmap -b x --clear img.qcow2 b0", "bitmap --clear img.qcow2",
                "bitmap --bogus img.qcow2 b", "bitmap --merge", "measure -O qcow2 img.qcow2", "measure --output=json -O qcow2 img.qcow2"],
            ["create:", "bitmap --add img.qcow2 a", "io:write 100k 300k", "bitmap --add --disable -g 4k img.qcow2 b", "io:write 5M 1",
                "bitmap --merge a img.qcow2 b", "bitmap --clear img.qcow2 a", "io:write 7M 64k", "bitmap --disable img.qcow2 a",
                "io:write 8M 64k", "bitmap --enable img.qcow2 b", "io:write 9M 512", "bitmap --remove --add -g 2G img.qcow2 a",
                "bitmap --add -g 0 img.qcow2 z", "bitmap --add --disable --add img.qcow2 y", "info img.qcow2", "check img.qcow2"],
            ["create:", "bitmap --add img.qcow2 x", "io:write 2M 2M", "bitmap --add img.qcow2 " + longName, "bitmap --add img.qcow2 " + longName + "m",
                "bitmap --remove img.qcow2 x", "bitmap --remove img.qcow2 " + longName, "info --output=json img.qcow2", "bitmap --add img.qcow2 ''",
                "bitmap --clear --remove img.qcow2 x"],
            // Merge from another image (-b, -F), of the same and of another size.
            ["create:", "other:", "bitmap --add img.qcow2 d", "bitmap --merge s -b other.qcow2 img.qcow2 d", "bitmap --merge s -b other.qcow2 -F qcow2 --enable img.qcow2 d",
                "bitmap --merge s -b big.qcow2 img.qcow2 d", "bitmap --merge nosuch -b other.qcow2 img.qcow2 d", "info img.qcow2"],
            ["create:compat=0.10", "bitmap --add img.qcow2 b0", "info img.qcow2"],
            ["create:cluster_size=512", "bitmap --add img.qcow2 small", "io:write 3M 1", "bitmap --add -g 512 img.qcow2 fine", "io:write 0 10M",
                "measure -O qcow2 img.qcow2", "info img.qcow2"],
            ["raw:", "bitmap --add img.qcow2 b0", "bitmap -f raw --add img.qcow2 b0", "bitmap -f raw --clear img.qcow2 b0"],
        ];
        using var dir = new TempDir("bm-cli");
        int n = 0;
        foreach (var scenario in scenarios)
        {
            string qd = dir.Combine($"q{n}"), sd = dir.Combine($"s{n}");
            n++;
            Directory.CreateDirectory(qd);
            Directory.CreateDirectory(sd);
            foreach (var step in scenario)
            {
                if (step.StartsWith("create:", StringComparison.Ordinal))
                {
                    var o = step["create:".Length..];
                    QemuTools.RunIn(qd, "qemu-img", ["create", "-q", "-f", "qcow2", .. (o.Length > 0 ? new[] { "-o", o } : []), "img.qcow2", "16M"]).EnsureSuccess();
                    File.Copy(Path.Combine(qd, "img.qcow2"), Path.Combine(sd, "img.qcow2"));
                    continue;
                }
                if (step == "raw:")
                {
                    QemuTools.RunIn(qd, "qemu-img", "create", "-q", "-f", "raw", "img.qcow2", "1M").EnsureSuccess();
                    File.Copy(Path.Combine(qd, "img.qcow2"), Path.Combine(sd, "img.qcow2"));
                    continue;
                }
                if (step == "other:")
                {
                    QemuTools.RunIn(qd, "qemu-img", "create", "-q", "-f", "qcow2", "other.qcow2", "16M").EnsureSuccess();
                    QemuTools.RunIn(qd, "qemu-img", "bitmap", "--add", "-g", "4k", "other.qcow2", "s").EnsureSuccess();
                    QemuTools.RunIn(qd, "qemu-io", "-c", "write 1M 5000", "-c", "write 15M 1M", "other.qcow2").EnsureSuccess();
                    QemuTools.RunIn(qd, "qemu-img", "create", "-q", "-f", "qcow2", "big.qcow2", "32M").EnsureSuccess();
                    QemuTools.RunIn(qd, "qemu-img", "bitmap", "--add", "big.qcow2", "s").EnsureSuccess();
                    foreach (var f in new[] { "other.qcow2", "big.qcow2" })
                        File.Copy(Path.Combine(qd, f), Path.Combine(sd, f));
                    continue;
                }
                if (step.StartsWith("io:", StringComparison.Ordinal))
                {
                    QemuTools.RunIn(qd, "qemu-io", "-f", "qcow2", "-c", step[3..], "img.qcow2").EnsureSuccess();
                    QemuTools.RunIn(sd, "qemu-io", "-f", "qcow2", "-c", step[3..], "img.qcow2").EnsureSuccess();
                    continue;
                }
                string[] argv = [.. step.Split(' ').Select(x => x == "''" ? "" : x)];
                var q = QemuTools.RunIn(qd, "qemu-img", argv);
                var s = QemuTools.StrataImgIn(sd, argv);
                string what = $"scenario {n}, step '{(step.Length > 100 ? step[..100] : step)}'";
                Assert.True(q.ExitCode == s.ExitCode, $"{what}: exit codes differ\nqemu-img: {q}\nstrata-img: {s}");
                Assert.True(q.StdOut == s.StdOut, $"{what}: stdout differs\nqemu-img: {q.StdOut}\nstrata-img: {s.StdOut}");
                Assert.True(BitmapOracle.Normalize(q.StdErr) == BitmapOracle.Normalize(s.StdErr), $"{what}: stderr differs\nqemu-img: {q.StdErr}\nstrata-img: {s.StdErr}");
            }
            if (scenario[0].StartsWith("create:", StringComparison.Ordinal))
            {
                BitmapOracle.AssertCheckClean(Path.Combine(sd, "img.qcow2"));
                await BitmapOracle.AssertSameBitmapsAsync(Path.Combine(qd, "img.qcow2"), Path.Combine(sd, "img.qcow2"));
            }
        }
    }

    /// <summary>
    /// A writer killed with bitmaps open leaves them in use: QEMU (qemu-io, kill -9) and Strata (its on-disk state while
    /// open, after a flush) leave the same directory; both tools then list "in-use", check alike, refuse to use the
    /// bitmap with the same message and hint, and can only remove it.
    /// </summary>
    [Fact]
    public async Task InUseAfterCrash_BehavesAsQemu()
    {
        QemuTools.RequireTools("qemu-img", "qemu-io");
        using var dir = new TempDir("bm-crash");
        string baseImg = dir.Combine("base.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", baseImg, "32M").EnsureSuccess();
        QemuTools.QemuImg("bitmap", "--add", baseImg, "live").EnsureSuccess();
        QemuTools.QemuImg("bitmap", "--add", "--disable", baseImg, "cold").EnsureSuccess();
        QemuTools.QemuIo("-c", "write 0 1M", baseImg).EnsureSuccess();

        // QEMU: qemu-io holds the image open (sleeping) and is killed.
        string qd = dir.Combine("q"), sd = dir.Combine("s");
        Directory.CreateDirectory(qd);
        Directory.CreateDirectory(sd);
        string qImg = Path.Combine(qd, "img.qcow2"), sImg = Path.Combine(sd, "img.qcow2");
        File.Copy(baseImg, qImg);
        var psi = new ProcessStartInfo(QemuTools.Resolve("qemu-io")) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "-f", "qcow2", "-c", "write 2M 64k", "-c", "flush", "-c", "sleep 20000", qImg })
            psi.ArgumentList.Add(a);
        using (var p = Process.Start(psi)!)
        {
            // qemu-io's output is buffered in a pipe: watch the image instead (in use as soon as it is open).
            var sw = Stopwatch.StartNew();
            while (BitmapOracle.InUseNames(qImg).Count < 2 && sw.Elapsed < TimeSpan.FromSeconds(15))
                await Task.Delay(50);
            await Task.Delay(500);
            Assert.False(p.HasExited, "qemu-io exited before it was killed");
            p.Kill(entireProcessTree: true);
            await p.WaitForExitAsync();
        }

        // Strata: what is on disk while it has the image open is what a kill -9 leaves.
        File.Copy(baseImg, sImg);
        await using (var img = await ImageOpener.OpenAsync(sImg, new ImageOpenOptions { Format = "qcow2" }))
        {
            await img.WriteAsync(new byte[65536], 2 << 20);
            await img.FlushAsync();
            File.Copy(sImg, dir.Combine("s-crash.qcow2"));
        }
        File.Copy(dir.Combine("s-crash.qcow2"), sImg, overwrite: true);

        Assert.Equal(["cold", "live"], BitmapOracle.InUseNames(qImg).Order());
        Assert.Equal(BitmapOracle.FormatSpecific(qImg), BitmapOracle.FormatSpecific(sImg));
        // From here both tools work on copies of the same crashed bytes.
        File.Copy(dir.Combine("s-crash.qcow2"), qImg, overwrite: true);
        string[][] steps =
        [
            ["info", "img.qcow2"], ["info", "--output=json", "img.qcow2"], ["check", "img.qcow2"], ["measure", "-O", "qcow2", "img.qcow2"],
            ["bitmap", "--clear", "img.qcow2", "live"], ["bitmap", "--enable", "img.qcow2", "cold"], ["bitmap", "--disable", "img.qcow2", "live"],
            ["bitmap", "--add", "img.qcow2", "fresh"], ["bitmap", "--merge", "live", "img.qcow2", "fresh"],
            ["bitmap", "--merge", "fresh", "img.qcow2", "cold"], ["bitmap", "--add", "img.qcow2", "live"],
            ["info", "img.qcow2"], ["bitmap", "--remove", "img.qcow2", "live"], ["check", "-r", "all", "img.qcow2"], ["info", "img.qcow2"],
            ["bitmap", "--remove", "img.qcow2", "cold"], ["check", "img.qcow2"], ["info", "img.qcow2"],
        ];
        foreach (var argv in steps)
        {
            var q = QemuTools.RunIn(qd, "qemu-img", argv);
            var s = QemuTools.StrataImgIn(sd, argv);
            string what = string.Join(' ', argv);
            Assert.True(q.ExitCode == s.ExitCode, $"{what}: exit codes differ\nqemu-img: {q}\nstrata-img: {s}");
            Assert.True(q.StdOut == s.StdOut, $"{what}: stdout differs\nqemu-img: {q.StdOut}\nstrata-img: {s.StdOut}");
            Assert.True(BitmapOracle.Normalize(q.StdErr) == BitmapOracle.Normalize(s.StdErr), $"{what}: stderr differs\nqemu-img: {q.StdErr}\nstrata-img: {s.StdErr}");
        }
        BitmapOracle.AssertCheckClean(sImg);
        Assert.Empty(BitmapOracle.Names(sImg).Intersect(["live", "cold"]));
        Assert.Equal(BitmapOracle.Names(qImg), BitmapOracle.Names(sImg));
    }

    /// <summary>convert --bitmaps (and --skip-broken-bitmaps): same messages, and the same bytes as qemu-img writes.</summary>
    [Fact]
    public void ConvertBitmaps_MatchesQemuImg()
    {
        QemuTools.RequireTools("qemu-img", "qemu-io");
        using var dir = new TempDir("bm-convert");
        string qd = dir.Combine("q"), sd = dir.Combine("s");
        Directory.CreateDirectory(qd);
        Directory.CreateDirectory(sd);
        QemuTools.RunIn(qd, "qemu-img", "create", "-q", "-f", "qcow2", "src.qcow2", "32M").EnsureSuccess();
        QemuTools.RunIn(qd, "qemu-img", "bitmap", "--add", "src.qcow2", "a").EnsureSuccess();
        QemuTools.RunIn(qd, "qemu-img", "bitmap", "--add", "-g", "4k", "--disable", "src.qcow2", "b").EnsureSuccess();
        QemuTools.RunIn(qd, "qemu-io", "-c", "write 1M 3M", "-c", "write 20M 5000", "src.qcow2").EnsureSuccess();
        QemuTools.RunIn(qd, "qemu-img", "bitmap", "--enable", "src.qcow2", "b").EnsureSuccess();
        QemuTools.RunIn(qd, "qemu-io", "-c", "write 30M 1M", "src.qcow2").EnsureSuccess();
        QemuTools.RunIn(qd, "qemu-img", "create", "-q", "-f", "raw", "r.img", "1M").EnsureSuccess();
        // An inconsistent bitmap: in use on disk, as after a crash.
        var bytes = File.ReadAllBytes(Path.Combine(qd, "src.qcow2"));
        File.WriteAllBytes(Path.Combine(qd, "iu.qcow2"), bytes);
        using (var img = new FileStream(Path.Combine(qd, "iu.qcow2"), FileMode.Open))
        {
            var header = new byte[4096];
            img.ReadExactly(header);
            int pos = (int)System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(100));
            while (System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(pos)) != 0x23852875)
                pos += 8 + (int)((System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(pos + 4)) + 7) & ~7u);
            long dirOff = (long)System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(pos + 24));
            img.Position = dirOff + 15;
            img.WriteByte(3); // in use + auto on the first bitmap
        }
        foreach (var f in new[] { "src.qcow2", "r.img", "iu.qcow2" })
            File.Copy(Path.Combine(qd, f), Path.Combine(sd, f));
        string[] cases =
        [
            "convert -O qcow2 --bitmaps src.qcow2 out.qcow2", "convert -O raw --bitmaps src.qcow2 out.img",
            "convert -O qcow2 --bitmaps src.qcow2 src.qcow2 out2.qcow2", "convert -O qcow2 -o compat=0.10 --bitmaps src.qcow2 out3.qcow2",
            "convert -O qcow2 --skip-broken-bitmaps src.qcow2 out4.qcow2", "convert --bitmaps -O qcow2 r.img out5.qcow2",
            "convert -O qcow2 --bitmaps iu.qcow2 out6.qcow2", "convert -O qcow2 --bitmaps --skip-broken-bitmaps iu.qcow2 out7.qcow2",
            "convert -O qcow2 -o cluster_size=4k --bitmaps src.qcow2 out8.qcow2",
        ];
        foreach (var c in cases)
        {
            string[] argv = c.Split(' ');
            var q = QemuTools.RunIn(qd, "qemu-img", argv);
            var s = QemuTools.StrataImgIn(sd, argv);
            Assert.True(q.ExitCode == s.ExitCode, $"{c}: exit codes differ\nqemu-img: {q}\nstrata-img: {s}");
            Assert.True(q.StdOut == s.StdOut, $"{c}: stdout differs\nqemu-img: {q.StdOut}\nstrata-img: {s.StdOut}");
            Assert.True(BitmapOracle.Normalize(q.StdErr) == BitmapOracle.Normalize(s.StdErr), $"{c}: stderr differs\nqemu-img: {q.StdErr}\nstrata-img: {s.StdErr}");
            string outName = argv[^1];
            if (q.ExitCode == 0 && outName.EndsWith(".qcow2", StringComparison.Ordinal))
                Assert.True(File.ReadAllBytes(Path.Combine(qd, outName)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(sd, outName))), $"{c}: targets differ");
        }
        Assert.Equal(["a", "b"], BitmapOracle.Names(Path.Combine(sd, "out.qcow2")));
    }
}
