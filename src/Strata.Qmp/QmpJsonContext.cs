using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace Strata.Qmp;

/// <summary>
/// The source-generated serialization metadata of every QMP record of this library (no
/// reflection; AOT- and trim-safe). Absent optional members are not written.
/// </summary>
[JsonSourceGenerationOptions(
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    RespectNullableAnnotations = false,
    MaxDepth = 1100)]
// messages
[JsonSerializable(typeof(QmpError))]
[JsonSerializable(typeof(QmpErrorClass))]
[JsonSerializable(typeof(QmpTimestamp))]
[JsonSerializable(typeof(QmpGreeting))]
[JsonSerializable(typeof(QmpEmpty))]
[JsonSerializable(typeof(JsonElement))]
[JsonSerializable(typeof(JsonObject))]
[JsonSerializable(typeof(JsonNode))]
// control, introspection
[JsonSerializable(typeof(QmpCapabilitiesArgs))]
[JsonSerializable(typeof(VersionInfo))]
[JsonSerializable(typeof(List<CommandInfo>))]
[JsonSerializable(typeof(List<SchemaInfo>))]
[JsonSerializable(typeof(ShutdownEventData))]
// block nodes
[JsonSerializable(typeof(BlockdevOptions))]
[JsonSerializable(typeof(BlockdevOptionsFile))]
[JsonSerializable(typeof(BlockdevOptionsQcow2))]
[JsonSerializable(typeof(BlockdevOptionsRaw))]
[JsonSerializable(typeof(BlockdevOptionsNull))]
[JsonSerializable(typeof(BlockdevRef))]
[JsonSerializable(typeof(BlockdevRefOrNull))]
[JsonSerializable(typeof(BlockdevDelArgs))]
[JsonSerializable(typeof(BlockResizeArgs))]
[JsonSerializable(typeof(BlockdevCreateArgs))]
[JsonSerializable(typeof(BlockdevCreateOptions))]
[JsonSerializable(typeof(BlockdevCreateOptionsFile))]
[JsonSerializable(typeof(BlockdevCreateOptionsQcow2))]
[JsonSerializable(typeof(QueryNamedBlockNodesArgs))]
[JsonSerializable(typeof(List<BlockDeviceInfo>))]
[JsonSerializable(typeof(ImageInfoSpecificQCow2))]
[JsonSerializable(typeof(List<BlockInfo>))]
[JsonSerializable(typeof(QueryBlockstatsArgs))]
[JsonSerializable(typeof(List<BlockStats>))]
// exports
[JsonSerializable(typeof(BlockExportOptions))]
[JsonSerializable(typeof(BlockExportOptionsNbd))]
[JsonSerializable(typeof(BlockExportDelArgs))]
[JsonSerializable(typeof(List<BlockExportInfo>))]
[JsonSerializable(typeof(NbdServerStartArgs))]
[JsonSerializable(typeof(UnixSocketAddress))]
[JsonSerializable(typeof(InetSocketAddress))]
[JsonSerializable(typeof(NbdServerAddArgs))]
[JsonSerializable(typeof(NbdServerRemoveArgs))]
// jobs
[JsonSerializable(typeof(List<JobInfo>))]
[JsonSerializable(typeof(JobIdArgs))]
[JsonSerializable(typeof(List<BlockJobInfo>))]
[JsonSerializable(typeof(BlockJobDeviceArgs))]
[JsonSerializable(typeof(BlockJobCancelArgs))]
[JsonSerializable(typeof(BlockJobSetSpeedArgs))]
// snapshots, transactions, backup, bitmaps
[JsonSerializable(typeof(BlockdevSnapshotSyncArgs))]
[JsonSerializable(typeof(BlockdevSnapshotArgs))]
[JsonSerializable(typeof(BlockdevSnapshotInternalArgs))]
[JsonSerializable(typeof(GeneratedSnapshotName))]
[JsonSerializable(typeof(BlockdevSnapshotDeleteInternalArgs))]
[JsonSerializable(typeof(SnapshotInfo))]
[JsonSerializable(typeof(TransactionArgs))]
[JsonSerializable(typeof(DriveBackupArgs))]
[JsonSerializable(typeof(BlockdevBackupArgs))]
[JsonSerializable(typeof(BlockDirtyBitmapAddArgs))]
[JsonSerializable(typeof(BlockDirtyBitmapArgs))]
[JsonSerializable(typeof(BlockDirtyBitmapMergeArgs))]
// events
[JsonSerializable(typeof(JobStatusChangeEvent))]
[JsonSerializable(typeof(BlockJobCompletedEvent))]
[JsonSerializable(typeof(BlockJobCancelledEvent))]
[JsonSerializable(typeof(BlockJobErrorEvent))]
[JsonSerializable(typeof(BlockJobReadyEvent))]
[JsonSerializable(typeof(BlockJobPendingEvent))]
[JsonSerializable(typeof(BlockExportDeletedEvent))]
public sealed partial class QmpJsonContext : JsonSerializerContext
{
}
