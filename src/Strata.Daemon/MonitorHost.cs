using Microsoft.Extensions.Logging;
using Strata.Daemon.Cli;
using Strata.Server;

namespace Strata.Daemon;

// PLACEHOLDER until Strata.Qmp.Server exists (being written now); not to be committed as is.
internal static class MonitorHost
{
    public static void Start(StorageDaemon daemon, ChardevOption dev, MonitorOption monitor, DaemonHost host, ILoggerFactory loggers) =>
        throw new Strata.Block.BlockException("QMP monitors are not available yet");
}
