using System.Net;
using Microsoft.Extensions.Logging;
using Strata.Block;
using Strata.Daemon.Cli;
using Strata.Qmp.Server;
using Strata.Server;

namespace Strata.Daemon;

/// <summary>
/// The QMP monitors of the daemon: one <see cref="QmpServer"/> (one command table, one event subscription) listening on
/// every --monitor's chardev socket. Disposal closes the listeners and the sessions.
/// </summary>
internal sealed class MonitorHost : IAsyncDisposable
{
    private readonly QmpServer _server;

    public MonitorHost(StorageDaemon daemon, DaemonHost host, ILoggerFactory loggers) =>
        _server = new QmpServer(daemon, new QmpServerOptions { Quit = host.RequestStop }, loggers);

    /// <summary>Listens on the chardev's socket (server=on): a unix path or host:port.</summary>
    public void Start(ChardevOption dev, MonitorOption monitor)
    {
        try
        {
            if (dev.Path != null)
            {
                _server.ListenUnix(dev.Path);
            }
            else
            {
                string host = dev.Host ?? "localhost";
                var ip = IPAddress.TryParse(host, out var parsed) ? parsed : Dns.GetHostAddresses(host)[0];
                _server.ListenTcp(new IPEndPoint(ip, dev.Port ?? 0));
            }
        }
        catch (System.Net.Sockets.SocketException e)
        {
            throw new BlockException($"Failed to bind socket: {e.Message}");
        }
    }

    public ValueTask DisposeAsync() => _server.DisposeAsync();
}
