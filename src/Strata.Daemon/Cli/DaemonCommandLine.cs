using System.Text.Json.Nodes;
using Strata.Block;

namespace Strata.Daemon.Cli;

/// <summary>One option of qemu-storage-daemon's command line, kept in order (qsd applies them in order).</summary>
public abstract record DaemonOption(string Text);
public sealed record BlockdevOption(string Text, JsonObject Options, bool Keyval) : DaemonOption(Text);
public sealed record ChardevOption(string Text, string Id, string? Path, string? Host, int? Port, bool Server, bool Wait) : DaemonOption(Text);
/// <param name="Readline">mode=readline (HMP): refused once the chardev is found, as qsd does ("Only QMP is supported").</param>
public sealed record MonitorOption(string Text, string Chardev, bool Pretty, bool Readline = false) : DaemonOption(Text);
public sealed record NbdServerOption(string Text, JsonObject Options) : DaemonOption(Text);
public sealed record ExportOption(string Text, JsonObject Options, bool Keyval) : DaemonOption(Text);
public sealed record ObjectOption(string Text, JsonObject Options) : DaemonOption(Text);

/// <summary>An error in one option: printed as "strata-daemon: --opt text: message", exit code 1 (as qsd).</summary>
public sealed class CommandLineException(string message) : Exception(message)
{
    public CommandLineException() : this("invalid command line") { }
    public CommandLineException(string message, Exception inner) : this(message) => _ = inner;
}

/// <summary>qemu-storage-daemon's command line (getopt_long with its option table).</summary>
public sealed class DaemonCommandLine
{
    public List<DaemonOption> Options { get; } = [];
    public string? PidFile { get; private set; }
    public bool Daemonize { get; private set; }
    public bool Help { get; private set; }
    public bool Version { get; private set; }
    public string? LogLevel { get; private set; }

    /// <summary>QEMU 7.2's ObjectType: what --object accepts (Strata creates none of them; they are checked and ignored).</summary>
    private static readonly HashSet<string> ObjectTypes =
    [
        "authz-list", "authz-listfile", "authz-pam", "authz-simple", "can-bus", "can-host-socketcan", "colo-compare", "cryptodev-backend",
        "cryptodev-backend-builtin", "cryptodev-backend-lkcf", "cryptodev-vhost-user", "dbus-vmstate", "filter-buffer", "filter-dump",
        "filter-mirror", "filter-redirector", "filter-replay", "filter-rewriter", "input-barrier", "input-linux", "iothread", "main-loop",
        "memory-backend-epc", "memory-backend-file", "memory-backend-memfd", "memory-backend-ram", "pef-guest", "pr-manager-helper", "qtest",
        "rng-builtin", "rng-egd", "rng-random", "secret", "secret_keyring", "sev-guest", "thread-context", "s390-pv-guest", "throttle-group",
        "tls-creds-anon", "tls-creds-psk", "tls-creds-x509", "tls-cipher-suites", "x-remote-object", "x-vfio-user-server",
    ];

    public static DaemonCommandLine Parse(IReadOnlyList<string> args)
    {
        var cl = new DaemonCommandLine();
        for (int i = 0; i < args.Count; i++)
        {
            string a = args[i];
            string name;
            string? value = null;
            if (a.StartsWith("--", StringComparison.Ordinal))
            {
                int eq = a.IndexOf('=', StringComparison.Ordinal);
                name = eq < 0 ? a[2..] : a[2..eq];
                if (eq >= 0)
                    value = a[(eq + 1)..];
            }
            else if (a.StartsWith('-') && a.Length == 2)
                name = a[1..];
            else
                throw new CommandLineException($"Unexpected argument: {a}");

            bool needsValue = name is "blockdev" or "chardev" or "monitor" or "nbd-server" or "export" or "object" or "pidfile" or "trace" or "T" or "log-level";
            if (needsValue && value == null)
            {
                if (++i >= args.Count)
                    throw new CommandLineException($"option '{a}' requires an argument");
                value = args[i];
            }
            else if (!needsValue && value != null)
                throw new CommandLineException($"option '--{name}' doesn't allow an argument");

            string text = $"--{name} {value}";
            try
            {
                switch (name)
                {
                    // qsd acts on these as soon as it reads them, ignoring whatever follows.
                    case "h" or "help": cl.Help = true; return cl;
                    case "V" or "version": cl.Version = true; return cl;
                    case "daemonize": cl.Daemonize = true; break;
                    case "pidfile": cl.PidFile = value; break;
                    case "T" or "trace": break; // tracing is QEMU-specific; accepted and ignored
                    case "log-level": cl.LogLevel = value; break;
                    case "blockdev":
                    {
                        var (o, keyval) = Keyval.ParseOption(value!, "driver");
                        cl.Options.Add(new BlockdevOption(text, o, keyval));
                        break;
                    }
                    case "export":
                    {
                        var (o, keyval) = Keyval.ParseOption(value!, "type");
                        cl.Options.Add(new ExportOption(text, o, keyval));
                        break;
                    }
                    case "nbd-server":
                        cl.Options.Add(new NbdServerOption(text, Keyval.ParseOption(value!, null).Options));
                        break;
                    case "object":
                    {
                        var o = Keyval.ParseOption(value!, "qom-type").Options;
                        var opts = new BlockOptions(o, "", keyval: true);
                        string type = opts.RequireString("qom-type");
                        if (!ObjectTypes.Contains(type))
                            throw new CommandLineException($"{text}: Parameter 'qom-type' does not accept value '{type}'");
                        opts.RequireString("id");
                        cl.Options.Add(new ObjectOption(text, o));
                        break;
                    }
                    case "chardev":
                        cl.Options.Add(ParseChardev(text, Keyval.Parse(value!, "backend")));
                        break;
                    case "monitor":
                    {
                        var o = Keyval.Parse(value!, "chardev");
                        var opts = new BlockOptions(o, "", keyval: true);
                        string chardev = opts.RequireString("chardev");
                        string mode = opts.GetString("mode") ?? "control";
                        if (mode is not ("control" or "readline"))
                            throw new CommandLineException($"{text}: Parameter 'mode' does not accept value '{mode}'");
                        bool pretty = opts.GetBool("pretty") ?? false;
                        opts.GetString("id");
                        opts.EnsureAllRead();
                        cl.Options.Add(new MonitorOption(text, chardev, pretty, mode == "readline"));
                        break;
                    }
                    default:
                        throw new CommandLineException(a.StartsWith("--", StringComparison.Ordinal)
                            ? $"unrecognized option '{a}'"
                            : $"invalid option -- '{name}'");
                }
            }
            catch (FormatException e)
            {
                throw new CommandLineException($"{text}: {e.Message}");
            }
            catch (BlockException e)
            {
                throw new CommandLineException($"{text}: {e.Message}");
            }
            catch (System.Text.Json.JsonException e)
            {
                throw new CommandLineException($"{text}: JSON parse error, {e.Message}");
            }
        }
        return cl;
    }

    private static ChardevOption ParseChardev(string text, JsonObject o)
    {
        var opts = new BlockOptions(o, "", keyval: true);
        string backend = opts.RequireString("backend");
        if (backend != "socket")
            throw new CommandLineException($"{text}: chardev backend '{backend}' is not supported (use socket)");
        string id = opts.GetString("id") ?? throw new CommandLineException($"{text}: chardev: no id specified");
        string? path = opts.GetString("path");
        string? host = opts.GetString("host");
        long? port = opts.GetInt("port");
        bool server = opts.GetBool("server") ?? false;
        bool wait = opts.GetBool("wait") ?? true;
        opts.GetBool("telnet");
        opts.GetBool("nodelay");
        opts.EnsureAllRead();
        // qemu_chr_parse_socket: a path, else a host and its port, else a file descriptor (fd=, not supported here).
        if (path == null && host == null)
            throw new CommandLineException($"{text}: Unable to parse FD number "); // QEMU's message, trailing space included
        if (path == null && port == null)
            throw new CommandLineException($"{text}: chardev: socket: no port given");
        if (!server)
            throw new CommandLineException($"{text}: only server=on chardevs can carry a monitor in strata-daemon");
        return new ChardevOption(text, id, path, host, (int?)port, server, wait);
    }
}
