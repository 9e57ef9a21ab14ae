using System.Runtime.CompilerServices;

namespace Strata.Images.Storage;

/// <summary>
/// The points of a format driver's work that QEMU reports to its file child (BLKDBG_EVENT), in QAPI's BlkdebugEvent
/// order. A fault-injection storage (blkdebug) reacts to them; every other storage ignores them.
/// </summary>
public enum DebugEvent
{
    L1Update, L1GrowAllocTable, L1GrowWriteTable, L1GrowActivateTable,
    L2Load, L2Update, L2UpdateCompressed, L2AllocCowRead, L2AllocWrite,
    ReadAio, ReadBackingAio, ReadCompressed, WriteAio, WriteCompressed,
    VmstateLoad, VmstateSave, CowRead, CowWrite,
    ReftableLoad, ReftableGrow, ReftableUpdate,
    RefblockLoad, RefblockUpdate, RefblockUpdatePart, RefblockAlloc, RefblockAllocHookup, RefblockAllocWrite,
    RefblockAllocWriteBlocks, RefblockAllocWriteTable, RefblockAllocSwitchTable,
    ClusterAlloc, ClusterAllocBytes, ClusterFree,
    FlushToOs, FlushToDisk,
    PwritevRmwHead, PwritevRmwAfterHead, PwritevRmwTail, PwritevRmwAfterTail, Pwritev, PwritevZero, PwritevDone,
    EmptyImagePrepare, L1ShrinkWriteTable, L1ShrinkFreeL2Clusters, CorWrite, ClusterAllocSpace, None,
}

/// <summary>A storage that wants the events of the format above it (blkdebug).</summary>
public interface IDebugEventSink
{
    void OnDebugEvent(DebugEvent e);
}

public static class DebugEvents
{
    /// <summary>QAPI's names of <see cref="DebugEvent"/>, by value.</summary>
    public static readonly string[] Names =
    [
        "l1_update", "l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table",
        "l2_load", "l2_update", "l2_update_compressed", "l2_alloc_cow_read", "l2_alloc_write",
        "read_aio", "read_backing_aio", "read_compressed", "write_aio", "write_compressed",
        "vmstate_load", "vmstate_save", "cow_read", "cow_write",
        "reftable_load", "reftable_grow", "reftable_update",
        "refblock_load", "refblock_update", "refblock_update_part", "refblock_alloc", "refblock_alloc_hookup", "refblock_alloc_write",
        "refblock_alloc_write_blocks", "refblock_alloc_write_table", "refblock_alloc_switch_table",
        "cluster_alloc", "cluster_alloc_bytes", "cluster_free",
        "flush_to_os", "flush_to_disk",
        "pwritev_rmw_head", "pwritev_rmw_after_head", "pwritev_rmw_tail", "pwritev_rmw_after_tail", "pwritev", "pwritev_zero", "pwritev_done",
        "empty_image_prepare", "l1_shrink_write_table", "l1_shrink_free_l2_clusters", "cor_write", "cluster_alloc_space", "none",
    ];

    /// <summary>BLKDBG_EVENT: tells the storage, when it listens; a type test otherwise, so it costs nothing on plain files.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Event(this IStorage storage, DebugEvent e)
    {
        if (storage is IDebugEventSink sink)
            sink.OnDebugEvent(e);
    }
}
