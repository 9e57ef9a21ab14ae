namespace Strata.Client.Tests;

/// <summary>
/// How to start a QMP daemon that listens on a unix socket, in qemu-storage-daemon's syntax.
/// The client tests run against any daemon given this way: qemu-storage-daemon by default,
/// strata-daemon (or another build) through <c>STRATA_QMP_DAEMON</c> (program name or path) and,
/// if its arguments differ, <c>STRATA_QMP_DAEMON_ARGS</c> (a template where <c>{socket}</c> is
/// replaced by the socket path, split on spaces).
/// </summary>
public sealed record DaemonCommand(string Program, Func<string, IReadOnlyList<string>> Arguments)
{
    /// <summary>qemu-storage-daemon with its QMP monitor on the socket.</summary>
    public static DaemonCommand QemuStorageDaemon { get; } = QsdSyntax("qemu-storage-daemon");

    /// <summary>A program that takes qemu-storage-daemon's --chardev/--monitor options.</summary>
    public static DaemonCommand QsdSyntax(string program) => new(program, socket =>
        ["--chardev", $"socket,path={socket},server=on,wait=off,id=qmp0", "--monitor", "chardev=qmp0"]);

    /// <summary>The daemon named by the environment, else qemu-storage-daemon.</summary>
    public static DaemonCommand FromEnvironment()
    {
        var program = Environment.GetEnvironmentVariable("STRATA_QMP_DAEMON");
        if (string.IsNullOrWhiteSpace(program))
        {
            return QemuStorageDaemon;
        }

        var template = Environment.GetEnvironmentVariable("STRATA_QMP_DAEMON_ARGS");
        return string.IsNullOrWhiteSpace(template)
            ? QsdSyntax(program)
            : new DaemonCommand(program, socket =>
                template.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(a => a.Replace("{socket}", socket, StringComparison.Ordinal)).ToArray());
    }

    public override string ToString() => Program;
}
