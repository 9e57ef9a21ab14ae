using System.Text;
using Strata.Images.Format;
using Strata.Images.Storage;
using Xunit;

namespace Strata.Interop.Tests.Locking;

/// <summary>
/// QEMU's image locking across processes: strata-daemon and strata-img take the lock bytes qemu-storage-daemon and
/// qemu-img take, refuse what QEMU refuses with QEMU's messages, and QEMU's tools refuse what Strata holds. Locks are
/// read from outside with F_OFD_GETLK probes (<see cref="ImageLock.ProbeHeldBytes"/>).
/// </summary>
public sealed class ImageLockTests
{
    private static TempDir Images()
    {
        var dir = new TempDir("lock");
        QemuTools.RunIn(dir.Path, "qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "1M").EnsureSuccess();
        QemuTools.RunIn(dir.Path, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2").EnsureSuccess();
        QemuTools.RunIn(dir.Path, "qemu-img", "create", "-q", "-f", "raw", "r.raw", "1M").EnsureSuccess();
        return dir;
    }

    private static readonly string[] Files = ["top.qcow2", "base.qcow2", "r.raw"];

    private static string Probe(string dir) =>
        string.Join("; ", Files.Select(f => $"{f} [{string.Join(",", ImageLock.ProbeHeldBytes(Path.Combine(dir, f)))}]"));

    private const string Nbd = "addr.type=unix,addr.path=nbd.sock";

    /// <summary>Command lines whose locks must be the same under both daemons.</summary>
    private static readonly string[][] Configurations =
    [
        ["--blockdev", "file,node-name=f,filename=top.qcow2"],
        ["--blockdev", "file,node-name=f,filename=top.qcow2", "--blockdev", "qcow2,node-name=q,file=f"],
        ["--blockdev", "qcow2,node-name=q,file.driver=file,file.filename=top.qcow2"],
        ["--blockdev", "file,node-name=f,filename=top.qcow2,read-only=on", "--blockdev", "qcow2,node-name=q,file=f,read-only=on"],
        ["--blockdev", "file,node-name=f,filename=top.qcow2", "--blockdev", "qcow2,node-name=q,file=f", "--nbd-server", Nbd, "--export", "nbd,id=e,node-name=q"],
        ["--blockdev", "file,node-name=f,filename=top.qcow2", "--blockdev", "qcow2,node-name=q,file=f", "--nbd-server", Nbd, "--export", "nbd,id=e,node-name=q,writable=on"],
        ["--blockdev", "file,node-name=f,filename=top.qcow2,read-only=on", "--blockdev", "qcow2,node-name=q,file=f,read-only=on", "--nbd-server", Nbd, "--export", "nbd,id=e,node-name=q"],
        ["--blockdev", "file,node-name=f,filename=top.qcow2,locking=off", "--blockdev", "qcow2,node-name=q,file=f"],
        ["--blockdev", "file,node-name=f,filename=top.qcow2,locking=on", "--blockdev", "qcow2,node-name=q,file=f,force-share=on,read-only=on"],
        ["--blockdev", "file,node-name=bf,filename=base.qcow2", "--blockdev", "qcow2,node-name=b,file=bf",
         "--blockdev", "file,node-name=f,filename=top.qcow2", "--blockdev", "qcow2,node-name=q,file=f,backing=b"],
        ["--blockdev", "file,node-name=bf,filename=base.qcow2,read-only=on", "--blockdev", "qcow2,node-name=b,file=bf,read-only=on",
         "--blockdev", "file,node-name=f,filename=top.qcow2", "--blockdev", "qcow2,node-name=q,file=f,backing=b",
         "--nbd-server", Nbd, "--export", "nbd,id=e,node-name=q,writable=on"],
        ["--blockdev", "file,node-name=f,filename=r.raw"],
        ["--blockdev", "file,node-name=f,filename=r.raw", "--blockdev", "raw,node-name=q,file=f"],
        ["--blockdev", "file,node-name=f,filename=r.raw", "--blockdev", "raw,node-name=q,file=f", "--nbd-server", Nbd, "--export", "nbd,id=e,node-name=q"],
        ["--blockdev", "file,node-name=f,filename=r.raw", "--blockdev", "raw,node-name=q,file=f", "--nbd-server", Nbd, "--export", "nbd,id=e,node-name=q,writable=on"],
        ["--blockdev", "file,node-name=f,filename=r.raw", "--nbd-server", Nbd, "--export", "nbd,id=e,node-name=f,writable=on"],
    ];

    private static async Task<string> LocksUnder(bool strata, string dir, string[] args)
    {
        await using var d = await LockDaemon.StartAsync(strata, dir, args);
        Assert.False(d.HasExited, $"{(strata ? "strata-daemon" : "qemu-storage-daemon")} {string.Join(' ', args)} failed: {d.StandardError}");
        return Probe(dir);
    }

    [Fact]
    public async Task Strata_daemon_holds_the_lock_bytes_qemu_storage_daemon_holds()
    {
        using var dir = Images();
        var report = new StringBuilder();
        int locked = 0;
        foreach (var args in Configurations)
        {
            string qsd = await LocksUnder(false, dir.Path, args);
            string strata = await LocksUnder(true, dir.Path, args);
            locked += qsd.Contains("[1", StringComparison.Ordinal) ? 1 : 0;
            if (qsd != strata)
                report.Append($"{string.Join(' ', args)}\n  qsd:    {qsd}\n  strata: {strata}\n");
        }
        Assert.True(report.Length == 0, report.ToString());
        Assert.True(locked >= 10, "the table should mostly hold locks");
        Assert.Equal("top.qcow2 []; base.qcow2 []; r.raw []", Probe(dir.Path)); // all gone with the daemons
    }

    /// <summary>The same QMP steps on both daemons, the locks probed after each: taking and releasing follow the graph.</summary>
    [Fact]
    public async Task Locks_follow_blockdev_add_exports_and_blockdev_del_as_in_qsd()
    {
        using var dir = Images();
        string[] steps =
        [
            """{"execute":"blockdev-add","arguments":{"driver":"file","node-name":"f","filename":"top.qcow2"}}""",
            """{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"q","file":"f","backing":null}}""",
            """{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"b","read-only":true,"file":{"driver":"file","filename":"base.qcow2"}}}""",
            """{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"r","file":{"driver":"file","filename":"r.raw"}}}""",
            """{"execute":"nbd-server-start","arguments":{"addr":{"type":"unix","data":{"path":"nbd.sock"}}}}""",
            """{"execute":"block-export-add","arguments":{"type":"nbd","id":"er","node-name":"r","writable":true}}""",
            """{"execute":"block-export-add","arguments":{"type":"nbd","id":"eb","node-name":"b"}}""",
            """{"execute":"block_resize","arguments":{"node-name":"q","size":2097152}}""",
            """{"execute":"block-export-del","arguments":{"id":"er"}}""",
            """{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"q2","file":{"driver":"file","filename":"top.qcow2"}}}""",
            """{"execute":"blockdev-del","arguments":{"node-name":"q"}}""",
            """{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"q2","file":{"driver":"file","filename":"top.qcow2"}}}""",
            """{"execute":"block-export-del","arguments":{"id":"eb"}}""",
            """{"execute":"blockdev-del","arguments":{"node-name":"q2"}}""",
            """{"execute":"blockdev-del","arguments":{"node-name":"b"}}""",
        ];
        async Task<List<string>> Run(bool strata)
        {
            File.Delete(dir.Combine("nbd.sock")); // a killed daemon leaves its socket behind
            var log = new List<string>();
            await using var d = await LockDaemon.StartAsync(strata, dir.Path);
            foreach (var s in steps)
            {
                string reply = await d.QmpAsync(s);
                log.Add($"{s}\n    -> {reply}\n    locks {Probe(dir.Path)}");
            }
            return log;
        }
        var qsd = await Run(false);
        var strata = await Run(true);
        var report = new StringBuilder();
        for (int i = 0; i < steps.Length; i++)
            if (qsd[i] != strata[i])
                report.Append($"qsd:    {qsd[i]}\nstrata: {strata[i]}\n");
        Assert.True(report.Length == 0, report.ToString());
        Assert.Contains("Failed to get", qsd[9], StringComparison.Ordinal); // the second open of top.qcow2 is refused while q holds it
    }

    private static string AsQemu(string text, string program) => text.Replace(program + ": ", "X: ", StringComparison.Ordinal);

    /// <summary>
    /// One daemon holds top.qcow2 for writing; the other daemon (command line and QMP) and the other project's image
    /// tool are refused with the message QEMU gives in the mirrored case.
    /// </summary>
    [Fact]
    public async Task Each_side_refuses_what_the_other_holds_with_qemus_messages()
    {
        using var dir = Images();
        string[] holder = ["--blockdev", "file,node-name=f,filename=top.qcow2", "--blockdev", "qcow2,node-name=q,file=f",
            "--nbd-server", Nbd, "--export", "nbd,id=e,node-name=q,writable=on"];
        string[] second = ["--blockdev", "file,node-name=g,filename=top.qcow2", "--blockdev", "qcow2,node-name=p,file=g"];
        const string add = """{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"p","read-only":true,"file":{"driver":"file","filename":"top.qcow2"}}}""";
        string[][] imgCommands =
        [
            ["info", "top.qcow2"], ["check", "top.qcow2"], ["map", "--output=json", "top.qcow2"], ["compare", "top.qcow2", "base.qcow2"],
            ["measure", "-O", "qcow2", "top.qcow2"], ["convert", "-O", "raw", "top.qcow2", "out.raw"], ["resize", "top.qcow2", "2M"],
            ["create", "-q", "-f", "qcow2", "top.qcow2", "1M"], ["info", "-U", "top.qcow2"], ["map", "-U", "--output=json", "top.qcow2"],
            ["check", "-U", "top.qcow2"], ["check", "-r", "all", "-U", "top.qcow2"], ["info", "base.qcow2"],
        ];

        async Task<(string Daemon, string Qmp, string[] Img, string[] OwnImg, string Io)> RefusedBy(bool strataHolds)
        {
            await using var h = await LockDaemon.StartAsync(strataHolds, dir.Path, holder);
            Assert.False(h.HasExited, h.StandardError);
            await using var other = await LockDaemon.StartAsync(!strataHolds, dir.Path, second);
            Assert.True(other.HasExited, "the second daemon must be refused");
            string daemon = $"exit {other.ExitCode}: {AsQemu(AsQemu(other.StandardError, "strata-daemon"), "qemu-storage-daemon")}";
            await using var monitor = await LockDaemon.StartAsync(!strataHolds, dir.Path);
            string qmp = await monitor.QmpAsync(add);
            // The other side's image tool, then this side's own (a process of the holder's project is refused too).
            string[] Img(bool strataTool) => imgCommands.Select(c =>
            {
                var r = strataTool ? QemuTools.StrataImgIn(dir.Path, c) : QemuTools.RunIn(dir.Path, "qemu-img", c);
                return $"{string.Join(' ', c)}: exit {r.ExitCode}: {AsQemu(AsQemu(r.StdErr, "strata-img"), "qemu-img")}";
            }).ToArray();
            var io = QemuTools.RunIn(dir.Path, "qemu-io", "-c", "write 0 512", "top.qcow2");
            return (daemon, qmp, Img(!strataHolds), Img(strataHolds), $"exit {io.ExitCode}: {io.StdErr}");
        }

        var qsdHolds = await RefusedBy(strataHolds: false);
        var strataHolds = await RefusedBy(strataHolds: true);

        Assert.Equal("exit 1: X: --blockdev qcow2,node-name=p,file=g: Failed to get \"write\" lock\nIs another process using the image [top.qcow2]?\n",
            strataHolds.Daemon); // qsd refused by strata-daemon: QEMU's own wording
        Assert.Equal(strataHolds.Daemon, qsdHolds.Daemon);
        Assert.Equal("""{"error": {"class": "GenericError", "desc": "Failed to get shared \"write\" lock"}}""", strataHolds.Qmp);
        Assert.Equal(strataHolds.Qmp, qsdHolds.Qmp);
        Assert.Equal("info top.qcow2: exit 1: X: Could not open 'top.qcow2': Failed to get shared \"write\" lock\nIs another process using the image [top.qcow2]?\n",
            strataHolds.Img[0]); // qemu-img refused by strata-daemon
        Assert.Equal(strataHolds.Img, qsdHolds.Img);          // strata-img refused by qsd as qemu-img by strata-daemon
        Assert.Equal(qsdHolds.OwnImg, qsdHolds.Img);          // and as qemu-img by qsd
        Assert.Equal(strataHolds.OwnImg, strataHolds.Img);    // strata-img refused by strata-daemon alike
        Assert.Contains("Failed to get \"write\" lock", strataHolds.Io, StringComparison.Ordinal);
        Assert.Equal(qsdHolds.Io, strataHolds.Io);
        Assert.Equal("exit 0: ", strataHolds.Img[8][("info -U top.qcow2: ".Length)..]); // -U reads anyway
    }

    [Fact]
    public async Task Locking_off_and_read_only_nodes_let_others_in()
    {
        using var dir = Images();
        // locking=off: no locks, and no check against the holder's.
        await using (var qsd = await LockDaemon.StartAsync(false, dir.Path, "--blockdev", "file,node-name=f,filename=top.qcow2", "--blockdev", "qcow2,node-name=q,file=f"))
        {
            await using var strata = await LockDaemon.StartAsync(true, dir.Path, "--blockdev", "file,node-name=g,filename=top.qcow2,locking=off",
                "--blockdev", "qcow2,node-name=p,file=g,read-only=on");
            Assert.False(strata.HasExited, strata.StandardError);
        }
        await using (var strata = await LockDaemon.StartAsync(true, dir.Path, "--blockdev", "file,node-name=f,filename=top.qcow2,locking=off",
            "--blockdev", "qcow2,node-name=q,file=f"))
        {
            Assert.Equal("top.qcow2 []; base.qcow2 [100,201,203]; r.raw []", Probe(dir.Path));
            QemuTools.RunIn(dir.Path, "qemu-img", "info", "top.qcow2").EnsureSuccess();
        }
        // A read-only node shares reading: qemu-img info, check and strata-img map run, writers are refused.
        await using (var strata = await LockDaemon.StartAsync(true, dir.Path, "--blockdev", "file,node-name=f,filename=top.qcow2,read-only=on",
            "--blockdev", "qcow2,node-name=q,file=f,read-only=on", "--nbd-server", Nbd, "--export", "nbd,id=e,node-name=q"))
        {
            QemuTools.RunIn(dir.Path, "qemu-img", "info", "top.qcow2").EnsureSuccess();
            QemuTools.RunIn(dir.Path, "qemu-img", "check", "top.qcow2").EnsureSuccess();
            QemuTools.StrataImgIn(dir.Path, "map", "top.qcow2").EnsureSuccess();
            var w = QemuTools.RunIn(dir.Path, "qemu-io", "-c", "write 0 512", "top.qcow2");
            Assert.Contains("Failed to get \"write\" lock", w.StdErr, StringComparison.Ordinal);
            var r = QemuTools.StrataImgIn(dir.Path, "resize", "top.qcow2", "2M");
            Assert.Equal("strata-img: Could not open 'top.qcow2': Failed to get \"write\" lock\nIs another process using the image [top.qcow2]?\n", r.StdErr);
        }
    }

    /// <summary>strata-img's opening (the library with Lock on) holds what qemu-img would: qemu-img and qemu-io are refused.</summary>
    [Fact]
    public async Task An_image_strata_img_has_open_refuses_qemu_writers()
    {
        using var dir = Images();
        string top = dir.Combine("top.qcow2");
        await using (var img = await ImageOpener.OpenAsync(top, new ImageOpenOptions { Lock = true, ReadOnly = true }))
        {
            // Read-only, as qemu-img map: consistent read on both files, writes and resizes unshared by the qcow2 driver.
            Assert.Equal("top.qcow2 [100,201,203]; base.qcow2 [100,201,203]; r.raw []", Probe(dir.Path));
            var io = QemuTools.RunIn(dir.Path, "qemu-io", "-c", "write 0 512", "top.qcow2");
            Assert.NotEqual(0, io.ExitCode);
            Assert.Contains("Failed to get \"write\" lock", io.StdErr, StringComparison.Ordinal);
            QemuTools.RunIn(dir.Path, "qemu-img", "info", "top.qcow2").EnsureSuccess();
        }
        await using (var img = await ImageOpener.OpenAsync(top, new ImageOpenOptions { Lock = true, ReadOnly = false }))
        {
            var info = QemuTools.RunIn(dir.Path, "qemu-img", "info", "top.qcow2");
            Assert.Equal($"qemu-img: Could not open 'top.qcow2': Failed to get shared \"write\" lock\nIs another process using the image [top.qcow2]?\n", info.StdErr);
        }
        Assert.Equal("top.qcow2 []; base.qcow2 []; r.raw []", Probe(dir.Path)); // closing drops every lock
    }
}
