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

    public static ValueTask<JsonElement> QuitAsync(QmpCommandContext c, JsonElement args, CancellationToken ct)
    {
        c.Session.QuitRequested = true;
        return Args.Empty;
    }
}
