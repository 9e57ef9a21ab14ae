using System.Text.Json.Serialization;

namespace Strata.Qmp;

// qapi/block-core.json: blockdev-snapshot-sync, blockdev-snapshot, blockdev-snapshot-internal-sync,
// blockdev-snapshot-delete-internal-sync.

/// <summary>NewImageMode.</summary>
[JsonConverter(typeof(QapiEnumConverter<NewImageMode>))]
public enum NewImageMode
{
    /// <summary>Use an existing image.</summary>
    Existing,

    /// <summary>Create a new image, with absolute paths to its backing file.</summary>
    AbsolutePaths,

    /// <summary>Strata's extension: create a new image whose backing name is relative to its directory (qsd refuses it).</summary>
    RelativePaths,
}

/// <summary>Arguments of blockdev-snapshot-sync (BlockdevSnapshotSync): creates an overlay file and puts it on top of a node.</summary>
public sealed record BlockdevSnapshotSyncArgs
{
    [JsonPropertyName("device")] public string? Device { get; init; }

    [JsonPropertyName("node-name")] public string? NodeName { get; init; }

    [JsonPropertyName("snapshot-file")] public required string SnapshotFile { get; init; }

    [JsonPropertyName("snapshot-node-name")] public string? SnapshotNodeName { get; init; }

    /// <summary>Format of the overlay (default qcow2).</summary>
    [JsonPropertyName("format")] public string? Format { get; init; }

    [JsonPropertyName("mode")] public NewImageMode? Mode { get; init; }
}

/// <summary>Arguments of blockdev-snapshot (BlockdevSnapshot): puts an existing overlay node on top of a node.</summary>
public sealed record BlockdevSnapshotArgs
{
    [JsonPropertyName("node")] public required string Node { get; init; }

    [JsonPropertyName("overlay")] public required string Overlay { get; init; }
}

/// <summary>Arguments of blockdev-snapshot-internal-sync (BlockdevSnapshotInternal).</summary>
public sealed record BlockdevSnapshotInternalArgs
{
    /// <summary>Device or node name.</summary>
    [JsonPropertyName("device")] public required string Device { get; init; }

    /// <summary>Required by QEMU; strata-daemon generates a unique name when it is left out (an extension).</summary>
    [JsonPropertyName("name")] public string? Name { get; init; }
}

/// <summary>strata-daemon's reply to blockdev-snapshot-internal-sync without a name (QEMU replies {}).</summary>
public sealed record GeneratedSnapshotName
{
    [JsonPropertyName("name")] public required string Name { get; init; }
}

/// <summary>Arguments of blockdev-snapshot-delete-internal-sync; returns the deleted <see cref="SnapshotInfo"/>.</summary>
public sealed record BlockdevSnapshotDeleteInternalArgs
{
    [JsonPropertyName("device")] public required string Device { get; init; }

    [JsonPropertyName("id")] public string? Id { get; init; }

    [JsonPropertyName("name")] public string? Name { get; init; }
}
