using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Strata.Block;
using Strata.Daemon.Cli;
using Strata.Server;

namespace Strata.Daemon;

/// <summary>Applies the command line to a <see cref="StorageDaemon"/>, in order, and runs until quit or a signal.</summary>
internal sealed class DaemonHost
{
    private readonly DaemonCommandLine _cl;
    private readonly ILoggerFactory _loggers;
    private readonly ILogger _log;
    private readonly TaskCompletionSource _stop = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly List<string> _socketsToRemove = [];
    private MonitorHost? _monitors;

    public DaemonHost(DaemonCommandLine cl, ILoggerFactory loggers)
    {
        _cl = cl;
        _loggers = loggers;
        _log = loggers.CreateLogger("strata-daemon");
    }

    public void RequestStop() => _stop.TrySetResult();

    /// <summary>qemu_write_pidfile, with its message when the file cannot be created.</summary>
    private static async Task<bool> TryWritePidFileAsync(string path)
    {
        try
        {
            await File.WriteAllTextAsync(path, $"{Environment.ProcessId}\n").ConfigureAwait(false);
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            string reason = e switch
            {
                DirectoryNotFoundException or FileNotFoundException => "No such file or directory",
                UnauthorizedAccessException => "Permission denied",
                _ => e.Message,
            };
            Console.Error.WriteLine($"strata-daemon: cannot create PID file: Could not create '{path}': {reason}");
            return false;
        }
    }

    public async Task<int> RunAsync()
    {
        await using var daemon = new StorageDaemon(_loggers);
        var chardevs = new Dictionary<string, ChardevOption>();
        try
        {
            // Applied inside a turn of the main loop, as QEMU applies its command line before running the loop: a
            // monitor client connecting early waits for its first command until the whole line is in place.
            using (daemon.DeferClients())
            using (await daemon.MainLoop.EnterAsync().ConfigureAwait(false))
            {
                foreach (var opt in _cl.Options)
                    await ApplyAsync(daemon, opt, chardevs).ConfigureAwait(false);
            }
        }
        catch (CommandLineException e)
        {
            Console.Error.WriteLine($"strata-daemon: {e.Message}");
            if (_monitors != null)
                await _monitors.DisposeAsync().ConfigureAwait(false);
            return 1;
        }

        // Without its PID file the daemon does not run, but still closes what the command line opened.
        bool started = _cl.PidFile == null || await TryWritePidFileAsync(_cl.PidFile).ConfigureAwait(false);
        if (started)
        {
            using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, Stop);
            using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Stop);
            _log.LogInformation("strata-daemon ready");
            await _stop.Task.ConfigureAwait(false);
            _log.LogInformation("Shutting down: draining exports, flushing and closing images");
        }

        await daemon.ShutdownAsync().ConfigureAwait(false);
        if (_monitors != null)
            await _monitors.DisposeAsync().ConfigureAwait(false);
        if (started && _cl.PidFile != null)
            TryDelete(_cl.PidFile);
        foreach (var s in _socketsToRemove)
            TryDelete(s);
        return started ? 0 : 1;

        void Stop(PosixSignalContext ctx)
        {
            ctx.Cancel = true;
            RequestStop();
        }
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (IOException)
        {
        }
    }

    private async Task ApplyAsync(StorageDaemon daemon, DaemonOption opt, Dictionary<string, ChardevOption> chardevs)
    {
        try
        {
            switch (opt)
            {
                case BlockdevOption b:
                    await daemon.Graph.AddAsync(b.Options, b.Keyval).ConfigureAwait(false);
                    break;
                case NbdServerOption n:
                {
                    var o = new BlockOptions(n.Options, "", keyval: true);
                    var addr = o.GetObject("addr") ?? throw new BlockException("Parameter 'addr' is missing");
                    string type = addr.RequireString("type");
                    NbdAddress address = type switch
                    {
                        "unix" => new UnixNbdAddress(addr.RequireString("path")),
                        "inet" => new InetNbdAddress(addr.RequireString("host"), addr.RequireString("port"), addr.GetBool("ipv4"), addr.GetBool("ipv6"),
                            addr.GetBool("numeric") ?? false),
                        _ => throw new BlockException($"Parameter 'addr.type' does not accept value '{type}'"),
                    };
                    // Accepted for unix addresses too, as QEMU's keyval does; only inet uses them.
                    foreach (var flag in (string[])["abstract", "tight", "numeric", "ipv4", "ipv6"])
                        addr.GetBool(flag);
                    addr.EnsureAllRead();
                    long max = o.GetInt("max-connections") ?? 0;
                    if (max is < 0 or > uint.MaxValue)
                        throw new BlockException("Parameter 'max-connections' expects uint32_t");
                    if (o.GetString("tls-creds") != null || o.GetString("tls-authz") != null)
                        throw new BlockException("TLS is not supported by strata-daemon");
                    o.EnsureAllRead();
                    if (address is UnixNbdAddress u)
                    {
                        TryDelete(u.Path);
                        _socketsToRemove.Add(u.Path);
                    }
                    await daemon.StartNbdServerAsync(address, (uint)max).ConfigureAwait(false);
                    break;
                }
                case ExportOption e:
                {
                    var o = new BlockOptions(e.Options, "", e.Keyval);
                    string type = o.RequireString("type");
                    if (type != "nbd")
                        throw new BlockException($"Parameter 'type' does not accept value '{type}'");
                    var req = ExportRequest.Read(o);
                    o.GetString("iothread");
                    o.GetBool("fixed-iothread");
                    o.EnsureAllRead();
                    daemon.AddExport(req);
                    break;
                }
                case ChardevOption c:
                    if (chardevs.ContainsKey(c.Id))
                        throw new BlockException($"attempt to add duplicate chardev '{c.Id}'");
                    chardevs[c.Id] = c;
                    break;
                case MonitorOption m:
                    if (!chardevs.TryGetValue(m.Chardev, out var dev))
                        throw new BlockException($"chardev \"{m.Chardev}\" not found");
                    if (m.Readline)
                        throw new BlockException("Only QMP is supported");
                    StartMonitor(daemon, dev, m);
                    break;
                case ObjectOption:
                    break; // no object types Strata needs yet (iothreads and secrets are accepted and ignored)
            }
        }
        catch (BlockException ex)
        {
            // error_report_err: the message, then the hint on its own line.
            throw new CommandLineException($"{opt.Text}: {ex.Message}" + (ex.Hint is null ? "" : "\n" + ex.Hint));
        }
    }

    private void StartMonitor(StorageDaemon daemon, ChardevOption dev, MonitorOption m)
    {
        if (dev.Path != null)
        {
            TryDelete(dev.Path);
            _socketsToRemove.Add(dev.Path);
        }
        _monitors ??= new MonitorHost(daemon, this, _loggers);
        _monitors.Start(dev, m);
    }
}
