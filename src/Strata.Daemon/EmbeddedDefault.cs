using Strata.Images.Qcow2;
using Strata.Images.Storage;

namespace Strata.Daemon;

/// <summary>What strata-daemon runs with no arguments: one 8 GiB qcow2 disk in ./strata-data, exported over NBD, with a QMP socket.</summary>
internal static class EmbeddedDefault
{
    public const long DiskSize = 8L << 30;

    public static async Task<string[]> PrepareAsync(string dataDir)
    {
        Directory.CreateDirectory(dataDir);
        string disk = Path.Combine(dataDir, "disk.qcow2");
        if (!File.Exists(disk))
        {
            await using var img = await Qcow2Creator.CreateAsync(FileStorage.Create(disk, FileStorageOptions.Default),
                new Qcow2CreateOptions { Size = DiskSize }).ConfigureAwait(false);
            Console.WriteLine($"Created {disk} (qcow2, 8 GiB)");
        }
        string nbd = Path.Combine(dataDir, "nbd.sock"), qmp = Path.Combine(dataDir, "qmp.sock");
        return
        [
            "--blockdev", $"driver=file,node-name=disk0-file,filename={disk.Replace(",", ",,", StringComparison.Ordinal)}",
            "--blockdev", "driver=qcow2,node-name=disk0,file=disk0-file",
            "--nbd-server", $"addr.type=unix,addr.path={nbd.Replace(",", ",,", StringComparison.Ordinal)}",
            "--export", "type=nbd,id=disk0,node-name=disk0,name=disk0,writable=on",
            "--chardev", $"socket,id=qmp0,path={qmp.Replace(",", ",,", StringComparison.Ordinal)},server=on,wait=off",
            "--monitor", "chardev=qmp0",
        ];
    }

    public static void PrintHowToConnect(string dataDir)
    {
        string nbd = Path.GetFullPath(Path.Combine(dataDir, "nbd.sock"));
        string qmp = Path.GetFullPath(Path.Combine(dataDir, "qmp.sock"));
        Console.WriteLine($$"""
            strata-daemon is serving {{Path.GetFullPath(Path.Combine(dataDir, "disk.qcow2"))}}
              NBD export 'disk0' on {{nbd}}:
                nbdinfo 'nbd+unix:///disk0?socket={{nbd}}'
                qemu-img info 'nbd+unix:///disk0?socket={{nbd}}'
              QMP monitor on {{qmp}}:
                echo '{"execute":"qmp_capabilities"} {"execute":"query-named-block-nodes"}' | socat - UNIX-CONNECT:{{qmp}}
            Press Ctrl-C to stop (images are flushed and closed, sockets removed).
            """);
    }
}
