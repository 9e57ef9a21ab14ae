using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using Xunit;
using Xunit.Abstractions;

namespace Strata.Qmp.Server.Tests;

/// <summary>
/// strata-daemon as a whole process: the README's embedded default from an empty folder, clean shutdown on SIGTERM and
/// SIGINT (Ctrl-C), fio's nbd engine writing and verifying through it for a minute, and the NativeAOT binary users
/// run.
/// </summary>
public sealed class DaemonProcessTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData("TERM")]
    [InlineData("INT")]
    public async Task EmbeddedDefault_ServesItsDisk_AndShutsDownCleanly(string signal)
    {
        using var dir = new TempDir("embedded");
        using var daemon = StartDaemon(dir.Path, []);
        string data = Path.Combine(dir.Path, "strata-data");
        string nbd = Path.Combine(data, "nbd.sock"), qmp = Path.Combine(data, "qmp.sock"), disk = Path.Combine(data, "disk.qcow2");
        await WaitForSocketsAsync(daemon, nbd, qmp);

        string uri = $"nbd+unix:///disk0?socket={nbd}";
        var info = QemuTools.Run("nbdinfo", "--size", uri);
        Assert.True(info.ExitCode == 0, info.StdErr);
        Assert.Equal((8L << 30).ToString(System.Globalization.CultureInfo.InvariantCulture), info.StdOut.Trim());

        var write = QemuTools.QemuIo("-f", "raw", "-c", "write -P 0x5a 1M 3M", "-c", "flush", uri);
        Assert.True(write.ExitCode == 0, write.StdOut + write.StdErr);

        // QMP answers on the printed socket.
        string reply = await QmpExchangeAsync(qmp, """{"execute":"qmp_capabilities"}""", """{"execute":"query-block-exports"}""");
        Assert.Contains("\"node-name\": \"disk0\"", reply, StringComparison.Ordinal);

        string printed = daemon.StandardOutput;
        Assert.Contains("nbdinfo", printed, StringComparison.Ordinal);
        Assert.Contains(qmp, printed, StringComparison.Ordinal);

        await daemon.SignalAndWaitAsync(signal);
        Assert.Equal(0, daemon.ExitCode);
        Assert.False(File.Exists(nbd), "the NBD socket is left behind");
        Assert.False(File.Exists(qmp), "the QMP socket is left behind");

        var check = QemuTools.QemuImg("check", disk);
        Assert.True(check.ExitCode == 0, check.StdOut + check.StdErr);
        var read = QemuTools.QemuIo("-r", "-f", "qcow2", "-c", "read -P 0x5a 1M 3M", "-c", "read -P 0 0 1M", disk);
        Assert.True(read.ExitCode == 0 && !read.StdOut.Contains("Pattern verification failed", StringComparison.Ordinal), read.StdOut + read.StdErr);

        // A second start reuses the disk (no new one is created over the data).
        using var again = StartDaemon(dir.Path, []);
        await WaitForSocketsAsync(again, nbd, qmp);
        var reread = QemuTools.QemuIo("-r", "-f", "raw", "-c", "read -P 0x5a 1M 3M", uri);
        Assert.True(reread.ExitCode == 0 && !reread.StdOut.Contains("Pattern verification failed", StringComparison.Ordinal), reread.StdOut + reread.StdErr);
        Assert.DoesNotContain("Created", again.StandardOutput, StringComparison.Ordinal);
        await again.SignalAndWaitAsync("TERM");
        Assert.Equal(0, again.ExitCode);
    }

    /// <summary>fio's nbd engine, random reads and writes of mixed sizes with crc32c verification, 60 s (STRATA_FIO_SECONDS).</summary>
    [Fact]
    public async Task Fio_RandomReadWriteWithVerify_OverNbd_ImageStaysClean()
    {
        int seconds = int.TryParse(Environment.GetEnvironmentVariable("STRATA_FIO_SECONDS"), out var s) ? s : 60;
        using var dir = new TempDir("fio");
        string image = Path.Combine(dir.Path, "fio.qcow2"), sock = Path.Combine(dir.Path, "nbd.sock"), qmp = Path.Combine(dir.Path, "qmp.sock");
        var create = QemuTools.QemuImg("create", "-f", "qcow2", image, "256M");
        Assert.True(create.ExitCode == 0, create.StdErr);
        using var daemon = StartDaemon(dir.Path,
        [
            "--blockdev", $"driver=file,node-name=f0,filename={image}",
            "--blockdev", "driver=qcow2,node-name=d0,file=f0",
            "--nbd-server", $"addr.type=unix,addr.path={sock}",
            "--export", "type=nbd,id=e0,node-name=d0,name=d0,writable=on",
            "--chardev", $"socket,id=m0,path={qmp},server=on,wait=off", "--monitor", "chardev=m0",
        ]);
        await WaitForSocketsAsync(daemon, sock, qmp);

        var fio = QemuTools.Run("fio", TimeSpan.FromSeconds(seconds + 120), "--name=verify", "--ioengine=nbd", $"--uri=nbd+unix:///d0?socket={sock}",
            "--rw=randrw", "--rwmixread=50", "--bssplit=4k/50:16k/20:64k/20:1m/10", "--iodepth=16", "--numjobs=1",
            "--size=256M", "--time_based", $"--runtime={seconds}", "--verify=crc32c", "--verify_backlog=4096",
            "--verify_fatal=1", "--do_verify=1", "--randrepeat=0", "--output-format=json");
        output.WriteLine(fio.StdErr);
        Assert.True(fio.ExitCode == 0, $"fio failed ({fio.ExitCode}): {fio.StdErr}\n{Tail(fio.StdOut)}");
        Assert.DoesNotContain("verify", fio.StdErr, StringComparison.OrdinalIgnoreCase);
        using (var json = System.Text.Json.JsonDocument.Parse(fio.StdOut[fio.StdOut.IndexOf('{', StringComparison.Ordinal)..]))
        {
            var job = json.RootElement.GetProperty("jobs")[0];
            Assert.Equal(0, job.GetProperty("error").GetInt32());
            long written = job.GetProperty("write").GetProperty("io_bytes").GetInt64();
            long read = job.GetProperty("read").GetProperty("io_bytes").GetInt64();
            output.WriteLine($"fio: {written >> 20} MiB written, {read >> 20} MiB read (incl. verification) in {seconds} s");
            Assert.True(written > 64 << 20 && read > 64 << 20, $"too little I/O: {written} written, {read} read");
        }

        await daemon.SignalAndWaitAsync("TERM");
        Assert.Equal(0, daemon.ExitCode);
        var check = QemuTools.QemuImg("check", image);
        Assert.True(check.ExitCode == 0, check.StdOut + check.StdErr);
    }

    /// <summary>
    /// The published NativeAOT strata-daemon: the compile reports no trimming or AOT analysis warnings, the binary is
    /// position-dependent (README, "Start-up and memory"), and it serves QMP (replies and errors) and a writable NBD
    /// export, then shuts down on SIGTERM leaving a clean image with the data written.
    /// </summary>
    [Fact]
    public async Task PublishedNativeBinary_WithoutAnalysisWarnings_ServesQmpAndNbd()
    {
        using var dir = new TempDir("aot-daemon");
        string bin = dir.Combine("bin");
        string log = NativeAotPublish.Run("src/Strata.Daemon", bin);
        Assert.Empty(NativeAotPublish.AnalysisWarnings(log));
        string exe = Path.Combine(bin, "strata-daemon");
        Assert.True(NativeAotPublish.IsPositionDependent(exe), "strata-daemon is linked position-independent");

        string image = dir.Combine("d.qcow2"), nbd = dir.Combine("nbd.sock"), qmp = dir.Combine("qmp.sock");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", image, "64M").EnsureSuccess();
        using var daemon = new BackgroundProcess(Psi(exe, dir.Path,
        [
            "--blockdev", $"driver=file,node-name=f0,filename={image}",
            "--blockdev", "driver=qcow2,node-name=d0,file=f0",
            "--nbd-server", $"addr.type=unix,addr.path={nbd}",
            "--export", "type=nbd,id=e0,node-name=d0,name=d0,writable=on",
            "--chardev", $"socket,id=m0,path={qmp},server=on,wait=off", "--monitor", "chardev=m0",
        ]), "strata-daemon (NativeAOT)");
        await WaitForSocketsAsync(daemon, nbd, qmp);

        string replies = await QmpExchangeAsync(qmp, """{"execute":"qmp_capabilities"}""",
            """{"execute":"query-named-block-nodes","arguments":{"flat":true}}""", """{"execute":"no-such-command","id":7}""");
        Assert.Contains("\"node-name\": \"d0\"", replies, StringComparison.Ordinal);
        Assert.Contains("\"class\": \"CommandNotFound\"", replies, StringComparison.Ordinal);
        Assert.Contains("\"id\": 7", replies, StringComparison.Ordinal);

        string uri = $"nbd+unix:///d0?socket={nbd}";
        QemuTools.QemuIo("-f", "raw", "-c", "write -P 0x6b 1M 2M", "-c", "write -z 8M 1M", "-c", "flush", uri).EnsureSuccess();
        var map = QemuTools.NbdInfo("--map", uri).EnsureSuccess();
        Assert.Contains("data", map.StdOut, StringComparison.Ordinal);

        await daemon.SignalAndWaitAsync("TERM");
        Assert.Equal(0, daemon.ExitCode);
        QemuTools.QemuImg("check", image).EnsureSuccess();
        var read = QemuTools.QemuIo("-r", "-f", "qcow2", "-c", "read -P 0x6b 1M 2M", "-c", "read -P 0 8M 1M", image).EnsureSuccess();
        Assert.DoesNotContain("Pattern verification failed", read.StdOut, StringComparison.Ordinal);
    }

    /// <summary>
    /// Block status through strata-daemon's graph (a backend over a qcow2 node) equals qemu-storage-daemon's, including
    /// QEMU's metadata-preallocation heuristic (data clusters over host holes read as zero) and sparse reads.
    /// </summary>
    [Theory]
    [InlineData("preallocation=metadata")]
    [InlineData("preallocation=off")]
    public async Task NbdInfoMap_ThroughTheDaemon_EqualsQsd(string options)
    {
        using var dir = new TempDir("daemon-map");
        string image = dir.Combine("p.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", "-o", options, image, "64M").EnsureSuccess();
        QemuTools.QemuIo("-c", "write -P 1 1M 64k", "-c", "write -z 4M 128k", image).EnsureSuccess();
        var maps = new List<string>();
        foreach (bool strata in new[] { false, true })
        {
            string sock = dir.Combine(strata ? "s.sock" : "q.sock");
            string[] args =
            [
                "--blockdev", $"driver=file,node-name=f0,filename={image}",
                "--blockdev", "driver=qcow2,node-name=d0,file=f0,read-only=on",
                "--nbd-server", $"addr.type=unix,addr.path={sock}",
                "--export", "type=nbd,id=e0,node-name=d0,name=d0",
            ];
            using var daemon = strata ? StartDaemon(dir.Path, args) : new BackgroundProcess(Psi("qemu-storage-daemon", dir.Path, args), "qemu-storage-daemon");
            await WaitForSocketsAsync(daemon, sock);
            var map = QemuTools.Run("nbdinfo", "--map", $"nbd+unix:///d0?socket={sock}");
            Assert.True(map.ExitCode == 0, map.ToString());
            maps.Add(map.StdOut);
            await daemon.SignalAndWaitAsync("TERM");
        }
        Assert.Equal(maps[0], maps[1]);
    }

    private static ProcessStartInfo Psi(string program, string workingDirectory, IReadOnlyList<string> args)
    {
        var psi = new ProcessStartInfo(program) { WorkingDirectory = workingDirectory };
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        return psi;
    }

    private static string Tail(string s) => s.Length > 4000 ? s[^4000..] : s;

    private static BackgroundProcess StartDaemon(string workingDirectory, IReadOnlyList<string> args) =>
        new(Psi("dotnet", workingDirectory, [Daemons.StrataDll, .. args]), "strata-daemon");

    private static async Task WaitForSocketsAsync(BackgroundProcess daemon, params string[] sockets)
    {
        var sw = Stopwatch.StartNew();
        while (!sockets.All(File.Exists))
        {
            if (daemon.HasExited)
                throw new InvalidOperationException($"{daemon.Name} exited with {daemon.ExitCode}: {daemon.StandardError}");
            if (sw.Elapsed > TimeSpan.FromSeconds(30))
                throw new TimeoutException($"{daemon.Name} did not open {string.Join(", ", sockets)} in 30 s: {daemon.StandardError}");
            await Task.Delay(50);
        }
    }

    private static async Task<string> QmpExchangeAsync(string socket, params string[] commands)
    {
        using var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await s.ConnectAsync(new UnixDomainSocketEndPoint(socket));
        await using var stream = new NetworkStream(s, ownsSocket: false);
        using var reader = new StreamReader(stream, Encoding.UTF8);
        await reader.ReadLineAsync(); // greeting
        var replies = new StringBuilder();
        foreach (var c in commands)
        {
            await stream.WriteAsync(Encoding.UTF8.GetBytes(c + "\n"));
            replies.AppendLine(await reader.ReadLineAsync());
        }
        return replies.ToString();
    }
}
