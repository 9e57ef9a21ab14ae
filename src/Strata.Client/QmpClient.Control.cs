using Strata.Qmp;

namespace Strata.Client;

// qmp_capabilities (at connect), query-version, query-commands, query-qmp-schema, quit.
public sealed partial class QmpClient
{
    private static QmpJsonContext Ctx => QmpJsonContext.Default;

    private Task RunAsync<TArgs>(string command, TArgs args, System.Text.Json.Serialization.Metadata.JsonTypeInfo<TArgs> info, CancellationToken ct) =>
        ExecuteAsync(command, args, info, Ctx.QmpEmpty, ct);

    public Task<VersionInfo> QueryVersionAsync(CancellationToken cancellationToken = default) =>
        ExecuteAsync("query-version", Ctx.VersionInfo, cancellationToken);

    public async Task<IReadOnlyList<CommandInfo>> QueryCommandsAsync(CancellationToken cancellationToken = default) =>
        await ExecuteAsync("query-commands", Ctx.ListCommandInfo, cancellationToken).ConfigureAwait(false);

    /// <summary>The server's schema (introspection): every command, event and type.</summary>
    public async Task<IReadOnlyList<SchemaInfo>> QueryQmpSchemaAsync(CancellationToken cancellationToken = default) =>
        await ExecuteAsync("query-qmp-schema", Ctx.ListSchemaInfo, cancellationToken).ConfigureAwait(false);

    /// <summary>
    /// Asks the server to exit. The server may close the connection before its reply
    /// arrives: that counts as success too.
    /// </summary>
    public async Task QuitAsync(CancellationToken cancellationToken = default)
    {
        try
        {
            await ExecuteAsync("quit", Ctx.QmpEmpty, cancellationToken).ConfigureAwait(false);
        }
        catch (QmpConnectionClosedException)
        {
        }
    }
}
