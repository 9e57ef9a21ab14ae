using System.Diagnostics;

namespace Strata.Nbd.Tests.Infrastructure;

/// <summary>A qemu-storage-daemon 7.2 exporting one qcow2 image over NBD: the reference in differential tests.</summary>
public sealed class Qsd : IAsyncDisposable
{
    private readonly BackgroundProcess _process;

    private Qsd(BackgroundProcess process, string socketPath)
    {
        _process = process;
        SocketPath = socketPath;
    }

    public string SocketPath { get; }

    public string Uri(string export) => Tools.Uri(SocketPath, export);

    public static async Task<Qsd> StartAsync(string image, string socketPath, string exportOptions)
    {
        var psi = new ProcessStartInfo(Tools.Resolve("qemu-storage-daemon"));
        foreach (var a in new[]
        {
            "--blockdev", $"driver=file,node-name=f,filename={image}",
            "--blockdev", "driver=qcow2,node-name=d,file=f",
            "--nbd-server", $"addr.type=unix,addr.path={socketPath}",
            "--export", "type=nbd,id=e,node-name=d,name=d" + exportOptions,
        })
        {
            psi.ArgumentList.Add(a);
        }
        var process = new BackgroundProcess(psi);
        var qsd = new Qsd(process, socketPath);
        for (int i = 0; i < 200 && !File.Exists(socketPath); i++)
        {
            if (process.HasExited)
            {
                await process.WaitForExitAsync(); // all of stderr read
                throw new InvalidOperationException("qemu-storage-daemon failed: " + process.StandardError);
            }
            await Task.Delay(25);
        }
        if (!File.Exists(socketPath))
        {
            await qsd.DisposeAsync();
            throw new TimeoutException("qemu-storage-daemon did not create its socket");
        }
        return qsd;
    }

    public ValueTask DisposeAsync() => _process.DisposeAsync();
}
