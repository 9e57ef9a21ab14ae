using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;

namespace Strata.Qmp;

// qapi/transaction.json: transaction (TransactionAction, TransactionProperties).

/// <summary>TransactionActionKind.</summary>
[JsonConverter(typeof(QapiEnumConverter<TransactionActionKind>))]
public enum TransactionActionKind
{
    Abort,
    BlockDirtyBitmapAdd,
    BlockDirtyBitmapRemove,
    BlockDirtyBitmapClear,
    BlockDirtyBitmapEnable,
    BlockDirtyBitmapDisable,
    BlockDirtyBitmapMerge,
    BlockdevBackup,
    BlockdevSnapshot,
    BlockdevSnapshotInternalSync,
    BlockdevSnapshotSync,
    DriveBackup,
}

/// <summary>ActionCompletionMode.</summary>
[JsonConverter(typeof(QapiEnumConverter<ActionCompletionMode>))]
public enum ActionCompletionMode
{
    Individual,
    Grouped,
}

/// <summary>Arguments of transaction.</summary>
public sealed record TransactionArgs
{
    [JsonPropertyName("actions")] public required IReadOnlyList<TransactionAction> Actions { get; init; }

    [JsonPropertyName("properties")] public TransactionProperties? Properties { get; init; }
}

/// <summary>TransactionProperties.</summary>
public sealed record TransactionProperties
{
    [JsonPropertyName("completion-mode")] public ActionCompletionMode? CompletionMode { get; init; }
}

/// <summary>
/// One action of a transaction: <c>{"type": "blockdev-snapshot-sync", "data": {…}}</c>.
/// Build with the static methods; read the data with <see cref="DataAs{T}"/>.
/// </summary>
public sealed record TransactionAction
{
    [JsonPropertyName("type")] public required TransactionActionKind Type { get; init; }

    [JsonPropertyName("data")] public required JsonElement Data { get; init; }

    public T DataAs<T>(JsonTypeInfo<T> typeInfo) =>
        Data.Deserialize(typeInfo) ?? throw new JsonException($"no data for transaction action {Type}");

    public static TransactionAction Create<T>(TransactionActionKind type, T data, JsonTypeInfo<T> typeInfo) =>
        new() { Type = type, Data = JsonSerializer.SerializeToElement(data, typeInfo) };

    private static QmpJsonContext Ctx => QmpJsonContext.Default;

    public static TransactionAction Abort() => Create(TransactionActionKind.Abort, QmpEmpty.Instance, Ctx.QmpEmpty);

    public static TransactionAction BlockDirtyBitmapAdd(BlockDirtyBitmapAddArgs data) =>
        Create(TransactionActionKind.BlockDirtyBitmapAdd, data, Ctx.BlockDirtyBitmapAddArgs);

    public static TransactionAction BlockDirtyBitmapRemove(BlockDirtyBitmapArgs data) =>
        Create(TransactionActionKind.BlockDirtyBitmapRemove, data, Ctx.BlockDirtyBitmapArgs);

    public static TransactionAction BlockDirtyBitmapClear(BlockDirtyBitmapArgs data) =>
        Create(TransactionActionKind.BlockDirtyBitmapClear, data, Ctx.BlockDirtyBitmapArgs);

    public static TransactionAction BlockDirtyBitmapEnable(BlockDirtyBitmapArgs data) =>
        Create(TransactionActionKind.BlockDirtyBitmapEnable, data, Ctx.BlockDirtyBitmapArgs);

    public static TransactionAction BlockDirtyBitmapDisable(BlockDirtyBitmapArgs data) =>
        Create(TransactionActionKind.BlockDirtyBitmapDisable, data, Ctx.BlockDirtyBitmapArgs);

    public static TransactionAction BlockDirtyBitmapMerge(BlockDirtyBitmapMergeArgs data) =>
        Create(TransactionActionKind.BlockDirtyBitmapMerge, data, Ctx.BlockDirtyBitmapMergeArgs);

    public static TransactionAction BlockdevBackup(BlockdevBackupArgs data) =>
        Create(TransactionActionKind.BlockdevBackup, data, Ctx.BlockdevBackupArgs);

    public static TransactionAction BlockdevSnapshot(BlockdevSnapshotArgs data) =>
        Create(TransactionActionKind.BlockdevSnapshot, data, Ctx.BlockdevSnapshotArgs);

    public static TransactionAction BlockdevSnapshotInternalSync(BlockdevSnapshotInternalArgs data) =>
        Create(TransactionActionKind.BlockdevSnapshotInternalSync, data, Ctx.BlockdevSnapshotInternalArgs);

    public static TransactionAction BlockdevSnapshotSync(BlockdevSnapshotSyncArgs data) =>
        Create(TransactionActionKind.BlockdevSnapshotSync, data, Ctx.BlockdevSnapshotSyncArgs);

    public static TransactionAction DriveBackup(DriveBackupArgs data) =>
        Create(TransactionActionKind.DriveBackup, data, Ctx.DriveBackupArgs);
}
