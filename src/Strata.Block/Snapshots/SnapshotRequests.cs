namespace Strata.Block.Snapshots;

/// <summary>How blockdev-snapshot-sync gets its overlay file (QEMU's NewImageMode, plus Strata's relative-paths).</summary>
public enum NewImageMode
{
    /// <summary>The manager made the file: open it as is, its own backing name untouched.</summary>
    Existing,

    /// <summary>Create it, its backing name being the current image's file name as QEMU writes it.</summary>
    AbsolutePaths,

    /// <summary>Strata's extension (announced by QEMU, never shipped): create it with a backing name relative to the overlay's directory.</summary>
    RelativePaths,
}

/// <summary>blockdev-snapshot-sync: a new overlay file in front of a node (by device or node-name).</summary>
public sealed record SnapshotSyncRequest(string? Device, string? NodeName, string SnapshotFile, string? SnapshotNodeName = null,
    string? Format = null, NewImageMode Mode = NewImageMode.AbsolutePaths);

/// <summary>blockdev-snapshot: an overlay node added earlier (with backing: null) put in front of a node.</summary>
public sealed record SnapshotRequest(string Node, string Overlay);
