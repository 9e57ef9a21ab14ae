using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using Strata.Images.Bitmaps;
using Strata.Images.Format;
using Strata.Images.Qcow2;
using Xunit;

namespace Strata.Interop.Tests.Bitmaps;

/// <summary>
/// Bitmaps made live by qemu-storage-daemon (QMP block-dirty-bitmap-add/-merge/-clear/-disable, guest writes through
/// its NBD export) against the same session run through Strata's library: the stored directory (order included,
/// several bitmaps added in one session), the bits as QEMU serves them and as Strata loads them all match.
/// </summary>
public sealed class DaemonBitmapTests
{
    [Fact]
    public async Task QsdSession_AndStrataLibrarySession_StoreTheSameBitmaps()
    {
        QemuTools.RequireTools("qemu-img", "qemu-io", "qemu-storage-daemon", "qemu-nbd", "nbdinfo");
        using var dir = new TempDir("bm-qsd");
        string q = dir.Combine("q.qcow2"), s = dir.Combine("s.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", q, "48M").EnsureSuccess();
        QemuTools.QemuImg("bitmap", "--add", q, "old").EnsureSuccess();
        QemuTools.QemuIo("-c", "write 40M 64k", q).EnsureSuccess();
        File.Copy(q, s);
        string[] writes = ["write -P 7 0 5000", "write -z 3M 1M", "write -P 8 10000000 123", "write -P 9 47M 1M"];

        // QEMU: qsd with a QMP monitor and an NBD export.
        string qmpSock = dir.Combine("qmp.sock"), nbdSock = dir.Combine("nbd.sock");
        var psi = new ProcessStartInfo(QemuTools.Resolve("qemu-storage-daemon")) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[]
        {
            "--blockdev", $"driver=file,node-name=file0,filename={q}", "--blockdev", "driver=qcow2,node-name=disk,file=file0",
            "--nbd-server", $"addr.type=unix,addr.path={nbdSock}", "--export", "type=nbd,id=e0,node-name=disk,name=disk,writable=on",
            "--chardev", $"socket,path={qmpSock},server=on,wait=off,id=m0", "--monitor", "chardev=m0",
        })
            psi.ArgumentList.Add(a);
        using (var qsd = Process.Start(psi)!)
        {
            var stdout = qsd.StandardOutput.ReadToEndAsync();
            var stderr = qsd.StandardError.ReadToEndAsync();
            try
            {
                using var qmp = await Qmp.ConnectAsync(qmpSock);
                await qmp.RunAsync("""{"execute":"block-dirty-bitmap-add","arguments":{"node":"disk","name":"x1","persistent":true,"granularity":16384}}""");
                await qmp.RunAsync("""{"execute":"block-dirty-bitmap-add","arguments":{"node":"disk","name":"x2","persistent":true}}""");
                await qmp.RunAsync("""{"execute":"block-dirty-bitmap-add","arguments":{"node":"disk","name":"x3","persistent":true,"disabled":true,"granularity":512}}""");
                await qmp.RunAsync("""{"execute":"block-dirty-bitmap-add","arguments":{"node":"disk","name":"temp","granularity":512}}""");
                var io = new List<string> { "-f", "raw" };
                foreach (var w in writes)
                    io.AddRange(["-c", w]);
                io.Add($"nbd+unix:///disk?socket={nbdSock}");
                QemuTools.QemuIo([.. io]).EnsureSuccess();
                await qmp.RunAsync("""{"execute":"block-dirty-bitmap-merge","arguments":{"node":"disk","target":"x3","bitmaps":["temp","old"]}}""");
                await qmp.RunAsync("""{"execute":"block-dirty-bitmap-clear","arguments":{"node":"disk","name":"x2"}}""");
                await qmp.RunAsync("""{"execute":"block-dirty-bitmap-disable","arguments":{"node":"disk","name":"x1"}}""");
                await qmp.RunAsync("""{"execute":"quit"}""");
            }
            finally
            {
                if (!qsd.WaitForExit(20000))
                    qsd.Kill(entireProcessTree: true);
            }
            Assert.True(qsd.ExitCode == 0, $"qemu-storage-daemon exited with {qsd.ExitCode}: {await stdout}{await stderr}");
        }

        // Strata: the same session through the library.
        await using (var img = (Qcow2Image)await ImageOpener.OpenAsync(s, new ImageOpenOptions { Format = "qcow2" }))
        {
            await img.AddDirtyBitmapAsync("x1", 16384, persistent: true);
            await img.AddDirtyBitmapAsync("x2", persistent: true);
            await img.AddDirtyBitmapAsync("x3", 512, persistent: true, disabled: true);
            var temp = await img.AddDirtyBitmapAsync("temp", 512);
            var data = new byte[1 << 20];
            await img.WriteAsync(Fill(data, 7, 5000), 0);
            await img.WriteZeroesAsync(3 << 20, 1 << 20);
            await img.WriteAsync(Fill(data, 8, 123), 10000000);
            await img.WriteAsync(Fill(data, 9, 1 << 20), 47 << 20);
            var x3 = img.DirtyBitmaps.Lookup("x3");
            DirtyBitmapSet.Merge(x3, temp);
            DirtyBitmapSet.Merge(x3, img.DirtyBitmaps.Lookup("old"));
            DirtyBitmapSet.ClearBits(img.DirtyBitmaps.Lookup("x2"));
            img.DirtyBitmaps.SetEnabled(img.DirtyBitmaps.Lookup("x1"), false);
        }

        BitmapOracle.AssertCheckClean(q);
        BitmapOracle.AssertCheckClean(s);
        Assert.Equal(["old", "x3", "x2", "x1"], BitmapOracle.Names(q));
        Assert.Equal(0, QemuTools.QemuImg("compare", "-f", "qcow2", "-F", "qcow2", q, s).ExitCode);
        await BitmapOracle.AssertSameBitmapsAsync(q, s);
    }

    private static ReadOnlyMemory<byte> Fill(byte[] buf, byte value, int length)
    {
        Array.Fill(buf, value, 0, length);
        return buf.AsMemory(0, length);
    }

    /// <summary>A minimal QMP client over the monitor socket (line-delimited JSON; events are skipped).</summary>
    private sealed class Qmp : IDisposable
    {
        private readonly Socket _socket;
        private readonly StreamReader _reader;
        private readonly Stream _stream;

        private Qmp(Socket socket)
        {
            _socket = socket;
            _stream = new NetworkStream(socket, ownsSocket: false);
            _reader = new StreamReader(_stream, Encoding.UTF8);
        }

        public static async Task<Qmp> ConnectAsync(string path)
        {
            var sw = Stopwatch.StartNew();
            while (true)
            {
                var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    await socket.ConnectAsync(new UnixDomainSocketEndPoint(path));
                    var qmp = new Qmp(socket);
                    await qmp.ReadAsync(); // greeting
                    await qmp.RunAsync("""{"execute":"qmp_capabilities"}""");
                    return qmp;
                }
                catch (SocketException) when (sw.Elapsed < TimeSpan.FromSeconds(15))
                {
                    socket.Dispose();
                    await Task.Delay(50);
                }
            }
        }

        private async Task<JsonNode> ReadAsync()
        {
            var line = await _reader.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(30)) ?? throw new IOException("QMP connection closed");
            return JsonNode.Parse(line)!;
        }

        public async Task RunAsync(string command, bool expectReturn = true)
        {
            await _stream.WriteAsync(Encoding.UTF8.GetBytes(command + "\n"));
            if (!expectReturn)
                return;
            while (true)
            {
                var r = await ReadAsync();
                if (r["event"] != null)
                    continue;
                Assert.True(r["return"] != null, $"{command}: {r.ToJsonString()}");
                return;
            }
        }

        public void Dispose()
        {
            _reader.Dispose();
            _stream.Dispose();
            _socket.Dispose();
        }
    }
}
