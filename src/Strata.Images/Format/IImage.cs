using Strata.Images.Storage;

namespace Strata.Images.Format;

/// <summary>
/// An open disk image of one format: a guest-visible byte range of <see cref="Size"/> bytes.
/// The data path (read, write, zero, discard, flush, block status) is safe to call concurrently.
/// Requests are bounds-checked by the implementation; out-of-range requests throw <see cref="ArgumentOutOfRangeException"/>.
/// </summary>
public interface IImage : IAsyncDisposable
{
    /// <summary>Format name as QEMU spells it ("raw", "qcow2").</summary>
    string FormatName { get; }

    /// <summary>The file the image lives in (storage name), used in messages.</summary>
    string FileName { get; }

    IStorage Storage { get; }

    /// <summary>Virtual (guest) size in bytes.</summary>
    long Size { get; }

    bool IsReadOnly { get; }

    /// <summary>The opened backing image, or null when there is none or it was not opened.</summary>
    IImage? Backing { get; }

    /// <summary>The format driver's own image behind any wrappers (a graph node, a backend); the image itself otherwise.</summary>
    IImage FormatImage => this;

    /// <summary>Backing file name as recorded in the image (not resolved), or null.</summary>
    string? BackingFileName { get; }

    /// <summary>Backing format recorded in the image, or null.</summary>
    string? BackingFormat { get; }

    /// <summary>The granularity at which allocation status can change (cluster or subcluster size; 1 for raw).</summary>
    int AllocationGranularity { get; }

    /// <summary>Reads guest bytes, falling through to the backing chain and zeroes as the format says.</summary>
    ValueTask ReadAsync(Memory<byte> buffer, long offset, CancellationToken ct = default);

    ValueTask WriteAsync(ReadOnlyMemory<byte> data, long offset, WriteFlags flags = WriteFlags.None, CancellationToken ct = default);

    /// <summary>Makes the range read as zeroes (never falls through to a backing file afterwards).</summary>
    ValueTask WriteZeroesAsync(long offset, long length, ZeroFlags flags = ZeroFlags.None, CancellationToken ct = default);

    /// <summary>Drops the range's data where the format can; what it then reads is format-defined (backing or zero).</summary>
    ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default);

    /// <summary>Writes all cached metadata in a crash-safe order and makes everything durable.</summary>
    ValueTask FlushAsync(CancellationToken ct = default);

    /// <summary>Status of this layer only, starting at <paramref name="offset"/>, for at most <paramref name="length"/> bytes.</summary>
    ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken ct = default);

    /// <summary>Changes the virtual size. Shrinking needs <paramref name="allowShrink"/>.</summary>
    ValueTask ResizeAsync(long newSize, bool allowShrink, Preallocation prealloc = Preallocation.Off, CancellationToken ct = default);
}

[Flags]
public enum WriteFlags
{
    None = 0,
    /// <summary>Force unit access: the write is durable when it completes.</summary>
    Fua = 1,
}

[Flags]
public enum ZeroFlags
{
    None = 0,
    /// <summary>The range may be deallocated (hole / zero cluster without host space).</summary>
    MayUnmap = 1,
    /// <summary>Fail with <see cref="NotSupportedException"/> rather than write zero bytes (NBD FAST_ZERO).</summary>
    NoFallback = 2,
    Fua = 4,
}

public enum BlockState
{
    /// <summary>This layer holds data (which may still happen to be zero).</summary>
    Data,
    /// <summary>This layer says the range reads as zeroes.</summary>
    Zero,
    /// <summary>This layer holds nothing: reads go to the backing image (zeroes without one).</summary>
    Unallocated,
}

/// <param name="HostOffset">Where the data lives in <see cref="IImage.Storage"/>, when it is plainly mapped (not compressed).</param>
/// <param name="Allocated">Host space is allocated for the range in this layer (data, or preallocated zero).</param>
public readonly record struct BlockStatus(BlockState State, long Length, long? HostOffset = null, bool Compressed = false, bool Allocated = false);
