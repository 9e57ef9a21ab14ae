using static Strata.Qmp.Server.Schema.QapiMember;

namespace Strata.Qmp.Server.Schema;

/// <summary>
/// The QAPI types of the commands Strata implements, transcribed from qemu-storage-daemon 7.2's schema (member
/// order matters: QEMU visits and prints members in this order). Immutable definitions.
/// </summary>
public static class QmpTypes
{
    private static readonly QapiBuiltin Str = QapiBuiltin.Str;
    private static readonly QapiBuiltin Int = QapiBuiltin.Int;
    private static readonly QapiBuiltin Bool = QapiBuiltin.Bool;

    // ---- control --------------------------------------------------------------------------------------

    public static QapiEnum QmpCapability { get; } = new("QMPCapability", "oob");

    public static QapiObject QmpCapabilitiesArgs { get; } = new("q_obj_qmp_capabilities-arg", Opt("enable", new QapiArray(QmpCapability)));

    public static QapiObject VersionTriple { get; } = new("VersionTriple", Req("major", Int), Req("minor", Int), Req("micro", Int));

    public static QapiObject VersionInfo { get; } = new("VersionInfo", Req("qemu", VersionTriple), Req("package", Str));

    public static QapiObject CommandInfo { get; } = new("CommandInfo", Req("name", Str));

    public static QapiEnum SchemaMetaType { get; } = new("SchemaMetaType", "builtin", "enum", "array", "object", "alternate", "command", "event");

    private static readonly QapiEnum JsonType = new("JSONType", "string", "number", "int", "boolean", "null", "object", "array", "value");
    private static readonly QapiArray StrList = new(Str);

    private static readonly QapiObject SchemaInfoEnumMember = new("SchemaInfoEnumMember", Req("name", Str), Opt("features", StrList));
    private static readonly QapiObject SchemaInfoObjectMember = new("SchemaInfoObjectMember",
        Req("name", Str), Req("type", Str), Opt("default", QapiBuiltin.Any), Opt("features", StrList));
    private static readonly QapiObject SchemaInfoObjectVariant = new("SchemaInfoObjectVariant", Req("case", Str), Req("type", Str));
    private static readonly QapiObject SchemaInfoAlternateMember = new("SchemaInfoAlternateMember", Req("type", Str));

    public static QapiObject SchemaInfo { get; } = new("SchemaInfo",
        [Req("name", Str), Req("meta-type", SchemaMetaType), Opt("features", StrList)], "meta-type",
        ("builtin", new QapiObject("SchemaInfoBuiltin", Req("json-type", JsonType))),
        ("enum", new QapiObject("SchemaInfoEnum", Req("members", new QapiArray(SchemaInfoEnumMember)), Req("values", StrList))),
        ("array", new QapiObject("SchemaInfoArray", Req("element-type", Str))),
        ("object", new QapiObject("SchemaInfoObject", Req("members", new QapiArray(SchemaInfoObjectMember)), Opt("tag", Str),
            Opt("variants", new QapiArray(SchemaInfoObjectVariant)))),
        ("alternate", new QapiObject("SchemaInfoAlternate", Req("members", new QapiArray(SchemaInfoAlternateMember)))),
        ("command", new QapiObject("SchemaInfoCommand", Req("arg-type", Str), Req("ret-type", Str), Opt("allow-oob", Bool))),
        ("event", new QapiObject("SchemaInfoEvent", Req("arg-type", Str))));

    // ---- block nodes ----------------------------------------------------------------------------------

    public static QapiEnum BlockdevDriver { get; } = new("BlockdevDriver",
        "blkdebug", "blklogwrites", "blkreplay", "blkverify", "bochs", "cloop", "compress", "copy-before-write", "copy-on-read",
        "dmg", "file", "snapshot-access", "ftp", "ftps", "gluster", "host_cdrom", "host_device", "http", "https", "iscsi", "luks",
        "nbd", "nfs", "null-aio", "null-co", "nvme", "parallels", "preallocate", "qcow", "qcow2", "qed", "quorum", "raw", "rbd",
        "replication", "ssh", "throttle", "vdi", "vhdx", "vmdk", "vpc", "vvfat");

    private static readonly QapiEnum DiscardOptions = new("BlockdevDiscardOptions", "ignore", "unmap");
    public static QapiEnum DetectZeroesOptions { get; } = new("BlockdevDetectZeroesOptions", "off", "on", "unmap");
    private static readonly QapiObject CacheOptions = new("BlockdevCacheOptions", Opt("direct", Bool), Opt("no-flush", Bool));
    private static readonly QapiObject BlockdevOptionsFileObj = new("BlockdevOptionsFile",
        Req("filename", Str), Opt("pr-manager", Str), Opt("locking", new QapiEnum("OnOffAuto", "auto", "on", "off")),
        Opt("aio", new QapiEnum("BlockdevAioOptions", "threads", "native", "io_uring")), Opt("aio-max-batch", Int),
        Opt("drop-cache", Bool), Opt("x-check-cache-dropped", Bool));
    private static readonly QapiObject BlockdevOptionsNull = new("BlockdevOptionsNull",
        Opt("size", Int), Opt("latency-ns", QapiBuiltin.UInt64), Opt("read-zeroes", Bool));

    /// <summary>BlockdevRef: a node name or inline options (the options are the graph's business).</summary>
    // Read when visited, after every static member is set.
    private static readonly QapiRef BlockdevOptionsRef = new("BlockdevOptions", () => BlockdevOptions!);
    private static readonly QapiAlternate BlockdevRef = new("BlockdevRef", BlockdevOptionsRef, Str); // QEMU lists the definition first
    private static readonly QapiAlternate BlockdevRefOrNull = new("BlockdevRefOrNull", BlockdevOptionsRef, Str, QapiBuiltin.Null);

    private static readonly QapiObject BlockdevOptionsRaw = new("BlockdevOptionsRaw",
        Req("file", BlockdevRef), Opt("offset", Int), Opt("size", Int));
    private static readonly QapiObject BlockdevOptionsQcow2 = new("BlockdevOptionsQcow2",
        Req("file", BlockdevRef), Opt("backing", BlockdevRefOrNull), Opt("lazy-refcounts", Bool), Opt("pass-discard-request", Bool),
        Opt("pass-discard-snapshot", Bool), Opt("pass-discard-other", Bool), Opt("overlap-check", QapiBuiltin.Any),
        Opt("cache-size", Int), Opt("l2-cache-size", Int), Opt("l2-cache-entry-size", Int), Opt("refcount-cache-size", Int),
        Opt("cache-clean-interval", Int), Opt("encrypt", QapiBuiltin.Any), Opt("data-file", BlockdevRef));

    private static readonly QapiEnum BlockPermission = new("BlockPermission", "consistent-read", "write", "write-unchanged", "resize");
    private static readonly QapiEnum BlkdebugEvent = new("BlkdebugEvent", Strata.Images.Storage.DebugEvents.Names);
    private static readonly QapiObject BlockdevOptionsBlkdebug = new("BlockdevOptionsBlkdebug",
        Req("image", BlockdevRef), Opt("config", Str), Opt("align", Int), Opt("max-transfer", Int), Opt("opt-write-zero", Int),
        Opt("max-write-zero", Int), Opt("opt-discard", Int), Opt("max-discard", Int),
        Opt("inject-error", new QapiArray(new QapiObject("BlkdebugInjectErrorOptions",
            Req("event", BlkdebugEvent), Opt("state", Int),
            Opt("iotype", new QapiEnum("BlkdebugIOType", "read", "write", "write-zeroes", "discard", "flush", "block-status")),
            Opt("errno", Int), Opt("sector", Int), Opt("once", Bool), Opt("immediately", Bool)))),
        Opt("set-state", new QapiArray(new QapiObject("BlkdebugSetStateOptions",
            Req("event", BlkdebugEvent), Opt("state", Int), Req("new_state", Int)))),
        Opt("take-child-perms", new QapiArray(BlockPermission)), Opt("unshare-child-perms", new QapiArray(BlockPermission)));

    /// <summary>
    /// blockdev-add's arguments: the base members and the variants of the drivers Strata opens. They are checked first,
    /// as QEMU's visitor does before qmp_blockdev_add; what the types cannot say (a root node without node-name, a
    /// duplicate name, an unsupported driver) <see cref="Strata.Block.BlockGraph"/> checks after, with QEMU's messages.
    /// </summary>
    public static QapiObject BlockdevOptions { get; } = new("BlockdevOptions",
        [Req("driver", BlockdevDriver), Opt("node-name", Str), Opt("discard", DiscardOptions), Opt("cache", CacheOptions),
         Opt("read-only", Bool), Opt("auto-read-only", Bool), Opt("force-share", Bool), Opt("detect-zeroes", DetectZeroesOptions)],
        "driver",
        ("blkdebug", BlockdevOptionsBlkdebug), ("file", BlockdevOptionsFileObj), ("null-co", BlockdevOptionsNull), ("qcow2", BlockdevOptionsQcow2), ("raw", BlockdevOptionsRaw));

    public static QapiObject BlockdevDelArgs { get; } = new("q_obj_blockdev-del-arg", Req("node-name", Str));

    public static QapiObject BlockResizeArgs { get; } = new("q_obj_block_resize-arg", Opt("device", Str), Opt("node-name", Str), Req("size", Int));

    public static QapiObject QueryNamedBlockNodesArgs { get; } = new("q_obj_query-named-block-nodes-arg", Opt("flat", Bool));

    public static QapiObject QueryBlockstatsArgs { get; } = new("q_obj_query-blockstats-arg", Opt("query-nodes", Bool));

    /// <summary>An internal snapshot (also blockdev-snapshot-delete-internal-sync's reply).</summary>
    public static QapiObject SnapshotInfo { get; } = new("SnapshotInfo",
        Req("id", Str), Req("name", Str), Req("vm-state-size", Int), Req("date-sec", Int), Req("date-nsec", Int),
        Req("vm-clock-sec", Int), Req("vm-clock-nsec", Int), Opt("icount", Int));

    private static readonly QapiObject ImageInfoSpecificQCow2 = new("ImageInfoSpecificQCow2",
        Req("compat", Str), Opt("data-file", Str), Opt("data-file-raw", Bool), Opt("extended-l2", Bool), Opt("lazy-refcounts", Bool),
        Opt("corrupt", Bool), Req("refcount-bits", Int), Opt("encrypt", QapiBuiltin.Any), Opt("bitmaps", new QapiArray(QapiBuiltin.Any)),
        Req("compression-type", new QapiEnum("Qcow2CompressionType", "zlib", "zstd")));

    private static readonly QapiObject ImageInfoSpecific = new("ImageInfoSpecific",
        [Req("type", new QapiEnum("ImageInfoSpecificKind", "qcow2", "vmdk", "luks", "rbd"))], "type",
        ("qcow2", new QapiObject("ImageInfoSpecificQCow2Wrapper", Req("data", ImageInfoSpecificQCow2))));

    public static QapiObject ImageInfo { get; } = new("ImageInfo",
        Req("filename", Str), Req("format", Str), Opt("dirty-flag", Bool), Opt("actual-size", Int), Req("virtual-size", Int),
        Opt("cluster-size", Int), Opt("encrypted", Bool), Opt("compressed", Bool), Opt("backing-filename", Str),
        Opt("full-backing-filename", Str), Opt("backing-filename-format", Str), Opt("snapshots", new QapiArray(SnapshotInfo)),
        Opt("backing-image", QapiBuiltin.Any), Opt("format-specific", ImageInfoSpecific));

    private static readonly QapiObject BlockdevCacheInfo = new("BlockdevCacheInfo", Req("writeback", Bool), Req("direct", Bool), Req("no-flush", Bool));

    private static readonly QapiObject BlockDirtyInfo = new("BlockDirtyInfo",
        Opt("name", Str), Req("count", Int), Req("granularity", Int), Req("recording", Bool), Req("busy", Bool),
        Req("persistent", Bool), Opt("inconsistent", Bool));

    public static QapiObject BlockDeviceInfo { get; } = new("BlockDeviceInfo",
        Req("file", Str), Opt("node-name", Str), Req("ro", Bool), Req("drv", Str), Opt("backing_file", Str),
        Req("backing_file_depth", Int), Req("encrypted", Bool), Req("detect_zeroes", DetectZeroesOptions),
        Req("bps", Int), Req("bps_rd", Int), Req("bps_wr", Int), Req("iops", Int), Req("iops_rd", Int), Req("iops_wr", Int),
        Req("image", ImageInfo), Opt("bps_max", Int), Opt("bps_rd_max", Int), Opt("bps_wr_max", Int), Opt("iops_max", Int),
        Opt("iops_rd_max", Int), Opt("iops_wr_max", Int), Opt("bps_max_length", Int), Opt("bps_rd_max_length", Int),
        Opt("bps_wr_max_length", Int), Opt("iops_max_length", Int), Opt("iops_rd_max_length", Int), Opt("iops_wr_max_length", Int),
        Opt("iops_size", Int), Opt("group", Str), Req("cache", BlockdevCacheInfo), Req("write_threshold", Int),
        Opt("dirty-bitmaps", new QapiArray(BlockDirtyInfo)));

    public static QapiObject BlockInfo { get; } = new("BlockInfo",
        Req("device", Str), Opt("qdev", Str), Req("type", Str), Req("removable", Bool), Req("locked", Bool),
        Opt("inserted", BlockDeviceInfo), Opt("tray_open", Bool),
        Opt("io-status", new QapiEnum("BlockDeviceIoStatus", "ok", "failed", "nospace")));

    private static readonly QapiObject BlockDeviceTimedStats = new("BlockDeviceTimedStats",
        Req("interval_length", Int), Req("min_rd_latency_ns", Int), Req("max_rd_latency_ns", Int), Req("avg_rd_latency_ns", Int),
        Req("min_wr_latency_ns", Int), Req("max_wr_latency_ns", Int), Req("avg_wr_latency_ns", Int), Req("min_flush_latency_ns", Int),
        Req("max_flush_latency_ns", Int), Req("avg_flush_latency_ns", Int), Req("avg_rd_queue_depth", QapiBuiltin.Number),
        Req("avg_wr_queue_depth", QapiBuiltin.Number));

    private static readonly QapiObject BlockLatencyHistogramInfo = new("BlockLatencyHistogramInfo",
        Req("boundaries", new QapiArray(Int)), Req("bins", new QapiArray(Int)));

    private static readonly QapiObject BlockDeviceStats = new("BlockDeviceStats",
        Req("rd_bytes", Int), Req("wr_bytes", Int), Req("unmap_bytes", Int), Req("rd_operations", Int), Req("wr_operations", Int),
        Req("flush_operations", Int), Req("unmap_operations", Int), Req("rd_total_time_ns", Int), Req("wr_total_time_ns", Int),
        Req("flush_total_time_ns", Int), Req("unmap_total_time_ns", Int), Req("wr_highest_offset", Int), Req("rd_merged", Int),
        Req("wr_merged", Int), Req("unmap_merged", Int), Opt("idle_time_ns", Int), Req("failed_rd_operations", Int),
        Req("failed_wr_operations", Int), Req("failed_flush_operations", Int), Req("failed_unmap_operations", Int),
        Req("invalid_rd_operations", Int), Req("invalid_wr_operations", Int), Req("invalid_flush_operations", Int),
        Req("invalid_unmap_operations", Int), Req("account_invalid", Bool), Req("account_failed", Bool),
        Req("timed_stats", new QapiArray(BlockDeviceTimedStats)), Opt("rd_latency_histogram", BlockLatencyHistogramInfo),
        Opt("wr_latency_histogram", BlockLatencyHistogramInfo), Opt("flush_latency_histogram", BlockLatencyHistogramInfo));

    private static readonly QapiObject BlockStatsSpecificFile = new("BlockStatsSpecificFile",
        Req("discard-nb-ok", Int), Req("discard-nb-failed", Int), Req("discard-bytes-ok", Int));

    private static readonly QapiObject BlockStatsSpecific = new("BlockStatsSpecific",
        [Req("driver", BlockdevDriver)], "driver", ("file", BlockStatsSpecificFile), ("host_device", BlockStatsSpecificFile));

    public static QapiObject BlockStats { get; } = new("BlockStats",
        Opt("device", Str), Opt("qdev", Str), Opt("node-name", Str), Req("stats", BlockDeviceStats),
        Opt("driver-specific", BlockStatsSpecific), Opt("parent", QapiBuiltin.Any), Opt("backing", QapiBuiltin.Any));

    public static QapiObject XDbgBlockGraph { get; } = new("XDbgBlockGraph",
        Req("nodes", new QapiArray(new QapiObject("XDbgBlockGraphNode",
            Req("id", Int), Req("type", new QapiEnum("XDbgBlockGraphNodeType", "block-backend", "block-job", "block-driver")), Req("name", Str)))),
        Req("edges", new QapiArray(new QapiObject("XDbgBlockGraphEdge",
            Req("parent", Int), Req("child", Int), Req("name", Str), Req("perm", new QapiArray(BlockPermission)),
            Req("shared-perm", new QapiArray(BlockPermission))))));

    // ---- exports and the NBD server ---------------------------------------------------------------------

    public static QapiEnum BlockExportRemoveMode { get; } = new("BlockExportRemoveMode", "safe", "hard");
    public static QapiEnum BlockExportType { get; } = new("BlockExportType", "nbd", "vhost-user-blk", "fuse", "vduse-blk");

    private static readonly QapiObject InetSocketAddress = new("InetSocketAddress",
        Req("host", Str), Req("port", Str), Opt("numeric", Bool), Opt("to", QapiBuiltin.UInt32), Opt("ipv4", Bool), Opt("ipv6", Bool),
        Opt("keep-alive", Bool), Opt("mptcp", Bool));
    private static readonly QapiObject UnixSocketAddress = new("UnixSocketAddress", Req("path", Str), Opt("abstract", Bool), Opt("tight", Bool));
    private static readonly QapiObject VsockSocketAddress = new("VsockSocketAddress", Req("cid", Str), Req("port", Str));
    private static readonly QapiObject StringWrapper = new("String", Req("str", Str));
    private static readonly QapiEnum SocketAddressType = new("SocketAddressType", "inet", "unix", "vsock", "fd");

    private static readonly QapiObject SocketAddress = new("SocketAddress", [Req("type", SocketAddressType)], "type",
        ("inet", InetSocketAddress), ("unix", UnixSocketAddress), ("vsock", VsockSocketAddress), ("fd", StringWrapper));

    public static QapiObject SocketAddressLegacy { get; } = new("SocketAddressLegacy",
        [Req("type", new QapiEnum("SocketAddressLegacyKind", "inet", "unix", "vsock", "fd"))], "type",
        ("inet", new QapiObject("InetSocketAddressWrapper", Req("data", InetSocketAddress))),
        ("unix", new QapiObject("UnixSocketAddressWrapper", Req("data", UnixSocketAddress))),
        ("vsock", new QapiObject("VsockSocketAddressWrapper", Req("data", VsockSocketAddress))),
        ("fd", new QapiObject("StringWrapper", Req("data", StringWrapper))));

    internal static readonly QapiAlternate BlockDirtyBitmapOrStr = new("BlockDirtyBitmapOrStr", Str,
        new QapiObject("BlockDirtyBitmap", Req("node", Str), Req("name", Str)));

    public static QapiObject BlockExportOptions { get; } = new("BlockExportOptions",
        [Req("type", BlockExportType), Req("id", Str), Opt("fixed-iothread", Bool), Opt("iothread", Str), Req("node-name", Str),
         Opt("writable", Bool), Opt("writethrough", Bool)], "type",
        ("nbd", new QapiObject("BlockExportOptionsNbd", Opt("name", Str), Opt("description", Str),
            Opt("bitmaps", new QapiArray(BlockDirtyBitmapOrStr)), Opt("allocation-depth", Bool))),
        ("vhost-user-blk", new QapiObject("BlockExportOptionsVhostUserBlk", Req("addr", SocketAddress),
            Opt("logical-block-size", QapiBuiltin.UInt64), Opt("num-queues", QapiBuiltin.UInt32))),
        ("fuse", new QapiObject("BlockExportOptionsFuse", Req("mountpoint", Str), Opt("growable", Bool),
            Opt("allow-other", new QapiEnum("FuseExportAllowOther", "off", "on", "auto")))),
        ("vduse-blk", new QapiObject("BlockExportOptionsVduseBlk", Req("name", Str), Opt("num-queues", QapiBuiltin.UInt32),
            Opt("queue-size", QapiBuiltin.UInt32), Opt("logical-block-size", QapiBuiltin.UInt64), Opt("serial", Str))));

    public static QapiObject BlockExportDelArgs { get; } = new("q_obj_block-export-del-arg", Req("id", Str), Opt("mode", BlockExportRemoveMode));

    public static QapiObject BlockExportInfo { get; } = new("BlockExportInfo",
        Req("id", Str), Req("type", BlockExportType), Req("node-name", Str), Req("shutting-down", Bool));

    public static QapiObject NbdServerStartArgs { get; } = new("q_obj_nbd-server-start-arg",
        Req("addr", SocketAddressLegacy), Opt("tls-creds", Str), Opt("tls-authz", Str), Opt("max-connections", QapiBuiltin.UInt32));

    public static QapiObject NbdServerAddArgs { get; } = new("NbdServerAddOptions",
        Opt("name", Str), Opt("description", Str), Req("device", Str), Opt("writable", Bool), Opt("bitmap", Str));

    public static QapiObject NbdServerRemoveArgs { get; } = new("q_obj_nbd-server-remove-arg", Req("name", Str), Opt("mode", BlockExportRemoveMode));

    // ---- events -------------------------------------------------------------------------------------------

    public static QapiObject BlockExportDeletedData { get; } = new("q_obj_BLOCK_EXPORT_DELETED-arg", Req("id", Str));
}
