using System.Text.Json;
using Strata.Qmp.Server.Schema;

namespace Strata.Qmp.Server;

/// <summary>Runs one command: its arguments have passed the QAPI checks; the return value is the reply's "return".</summary>
public delegate ValueTask<JsonElement> QmpHandler(QmpCommandContext context, JsonElement arguments, CancellationToken ct);

/// <summary>One command of the table: its name, QAPI argument and return types, and its handler.</summary>
public sealed record QmpCommand(string Name, QapiObject Arguments, QapiType Returns, QmpHandler Handler)
{
    public bool AllowOob { get; init; }

    public IReadOnlyList<string> Features { get; init; } = [];
}

/// <summary>What a handler may use: the daemon, the server (for quit) and the session that sent the command.</summary>
public sealed class QmpCommandContext
{
    internal QmpCommandContext(QmpServer server, QmpSession session)
    {
        Server = server;
        Session = session;
    }

    public QmpServer Server { get; }

    public QmpSession Session { get; }

    public Strata.Server.StorageDaemon Daemon => Server.Daemon;
}

/// <summary>The commands a server knows, in registration order (explicit: no reflection).</summary>
public sealed class QmpCommandTable
{
    private readonly List<QmpCommand> _list = [];
    private readonly Dictionary<string, QmpCommand> _byName = new(StringComparer.Ordinal);

    public IReadOnlyList<QmpCommand> Commands => _list;

    public void Add(QmpCommand command)
    {
        if (!_byName.TryAdd(command.Name, command))
        {
            throw new ArgumentException($"command {command.Name} registered twice", nameof(command));
        }

        _list.Add(command);
    }

    public QmpCommand? Find(string name) => _byName.GetValueOrDefault(name);
}
