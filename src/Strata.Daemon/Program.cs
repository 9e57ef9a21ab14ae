using Microsoft.Extensions.Logging;
using Strata.Daemon;
using Strata.Daemon.Cli;
using Strata.Daemon.Logging;

// strata-daemon: qemu-storage-daemon's command line over Strata's block layer. With no arguments it runs
// the embedded default (./strata-data). This file only wires things up.
DaemonCommandLine cl;
bool embedded = args.Length == 0;
const string DataDir = "strata-data";
try
{
    cl = DaemonCommandLine.Parse(embedded ? await EmbeddedDefault.PrepareAsync(DataDir) : args);
}
catch (CommandLineException e)
{
    Console.Error.WriteLine($"strata-daemon: {e.Message}");
    return 1;
}

if (cl.Help)
{
    Console.WriteLine("""
        Usage: strata-daemon [options]
        Strata storage daemon, compatible with qemu-storage-daemon 7.2's command line.

          -h, --help                display this help and exit
          -V, --version             output version information and exit
          --blockdev [driver=]<driver>[,node-name=<N>][,discard=ignore|unmap]
                     [,cache.direct=on|off][,cache.no-flush=on|off]
                     [,read-only=on|off][,auto-read-only=on|off]
                     [,force-share=on|off][,detect-zeroes=on|off|unmap]
                     [,driver specific parameters...]
                                    configure a block backend (also as JSON)
          --chardev socket,id=<id>,path=<path>|host=<h>,port=<p>,server=on[,wait=off]
                                    configure a character device (for a monitor)
          --export [type=]nbd,id=<id>,node-name=<node-name>[,name=<export-name>]
                   [,writable=on|off][,description=<d>][,allocation-depth=on|off]
                                    export the specified block node over NBD
          --monitor [chardev=]name[,mode=control][,pretty=on|off]
                                    configure a QMP monitor
          --nbd-server addr.type=inet,addr.host=<host>,addr.port=<port>[,max-connections=<n>]
          --nbd-server addr.type=unix,addr.path=<path>[,max-connections=<n>]
                                    start an NBD server for exporting block nodes
          --object help | <type>,id=<id>[,...]
                                    accepted for compatibility
          --pidfile <path>          write process ID to a file after startup
          --log-level <level>       trace, debug, information (default), warning, error

        With no options: serve ./strata-data/disk.qcow2 (created if absent) over NBD and QMP sockets there.
        """);
    return 0;
}
if (cl.Version)
{
    Console.WriteLine("strata-daemon version 0.1 (qemu-storage-daemon 7.2 compatible)");
    return 0;
}

var level = cl.LogLevel switch
{
    "trace" => LogLevel.Trace,
    "debug" => LogLevel.Debug,
    "warning" => LogLevel.Warning,
    "error" => LogLevel.Error,
    _ => LogLevel.Information,
};
using var loggers = new LoggerFactory([new ConsoleLineLoggerProvider(level)], new LoggerFilterOptions { MinLevel = level });
var host = new DaemonHost(cl, loggers);
if (embedded)
    EmbeddedDefault.PrintHowToConnect(DataDir);
return await host.RunAsync();
