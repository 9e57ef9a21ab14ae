using Strata.Client.Tests;

namespace Strata.Qmp.Server.Tests;

/// <summary>The two daemons the suites run: qemu-storage-daemon (the oracle) and the strata-daemon built with these tests.</summary>
public static class Daemons
{
    /// <summary>qemu-storage-daemon: a missing program makes the tests fail (QmpDaemon never skips).</summary>
    public static DaemonCommand Qsd => DaemonCommand.QemuStorageDaemon;

    /// <summary>strata-daemon.dll from the test output directory, run by the dotnet host with qsd's arguments.</summary>
    public static DaemonCommand Strata { get; } = new("dotnet", socket =>
    [
        StrataDll, "--log-level", "warning",
        "--chardev", $"socket,path={socket},server=on,wait=off,id=qmp0", "--monitor", "chardev=qmp0",
    ]);

    public static string StrataDll
    {
        get
        {
            var dll = Path.Combine(AppContext.BaseDirectory, "strata-daemon.dll");
            return File.Exists(dll) ? dll : throw new FileNotFoundException("strata-daemon.dll is not next to the tests", dll);
        }
    }
}
