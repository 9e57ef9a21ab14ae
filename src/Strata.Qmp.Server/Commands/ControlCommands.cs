using System.Text.Json;

namespace Strata.Qmp.Server.Commands;

/// <summary>qmp_capabilities, query-version, query-commands, query-qmp-schema, quit.</summary>
internal static class ControlCommands
{
    public static ValueTask<JsonElement> QmpCapabilitiesAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        if (c.Session.Negotiated)
        {
            throw new QmpException(QmpErrors.CapabilitiesAlreadyNegotiated);
        }

        if (args.Member("enable") is { } enable)
        {
            foreach (var cap in enable.EnumerateArray())
            {
                if (cap.GetString() == QmpCapabilities.Oob)
                {
                    c.Session.OobEnabled = true;
                }
            }
        }

        c.Session.Negotiated = true;
        return Args.Empty;
    }

    public static ValueTask<JsonElement> QueryVersionAsync(QmpCommandContext c, JsonElement args, CancellationToken ct) =>
        ValueTask.FromResult(Args.Value(c.Server.Options.Version, QmpJsonContext.Default.VersionInfo));

    /// <summary>QEMU lists the commands newest registration first.</summary>
    public static ValueTask<JsonElement> QueryCommandsAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        var list = c.Server.Commands.Commands.Reverse().Select(x => new CommandInfo { Name = x.Name }).ToList();
        return ValueTask.FromResult(Args.Value(list, QmpJsonContext.Default.ListCommandInfo));
    }

    public static ValueTask<JsonElement> QueryQmpSchemaAsync(QmpCommandContext c, JsonElement args, CancellationToken ct) =>
        ValueTask.FromResult(c.Server.Schema);

    /// <summary>
    /// quit: qsd leaves its main loop before the reply goes out and closes its exports first, so a monitor sees
    /// BLOCK_EXPORT_DELETED before quit's reply; the rest of the shutdown follows the reply.
    /// </summary>
    public static async ValueTask<JsonElement> QuitAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        await c.Daemon.CloseExportsAsync(ct).ConfigureAwait(false);
        c.Session.QuitRequested = true;
        return await Args.Empty.ConfigureAwait(false);
    }
}
