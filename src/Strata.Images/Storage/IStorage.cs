namespace Strata.Images.Storage;

/// <summary>
/// A byte-addressed backing store (a host file, or nothing for benchmarks). Formats sit on top of it.
/// All members are safe to call concurrently; overlapping writes are the caller's business.
/// </summary>
public interface IStorage : IAsyncDisposable
{
    /// <summary>File name (or a description) used in error messages.</summary>
    string Name { get; }

    bool IsReadOnly { get; }

    /// <summary>
    /// Offsets, lengths and buffer addresses of reads and writes must be multiples of this
    /// (1 normally, the logical block size with O_DIRECT). Callers that cannot guarantee it use
    /// <see cref="StorageExtensions"/> helpers, which bounce through aligned buffers.
    /// </summary>
    int RequestAlignment { get; }

    /// <summary>Current length in bytes.</summary>
    long Length { get; }

    /// <summary>Reads exactly <paramref name="buffer"/>.Length bytes; bytes past the end read as zero.</summary>
    ValueTask ReadAsync(Memory<byte> buffer, long offset, CancellationToken ct = default);

    /// <summary>Writes all of <paramref name="data"/>, growing the file when needed.</summary>
    ValueTask WriteAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken ct = default);

    /// <summary>
    /// Makes the range read as zeroes. With <paramref name="mayUnmap"/> the storage may punch a hole;
    /// without it the range stays allocated (fallocate ZERO_RANGE, or written zeroes).
    /// </summary>
    ValueTask WriteZeroesAsync(long offset, long length, bool mayUnmap, CancellationToken ct = default);

    /// <summary>Drops the range if the storage can (punch hole); a no-op otherwise. Contents become unspecified (zero on files).</summary>
    ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default);

    /// <summary>Makes every completed write durable (fdatasync).</summary>
    ValueTask FlushAsync(CancellationToken ct = default);

    /// <summary>
    /// A hint that the writes so far will be flushed later: the storage may start writing them back now, so that the
    /// flush finds less to do (a bulk copy overlaps its copying with the disk's writing). Durability still needs
    /// <see cref="FlushAsync"/>.
    /// </summary>
    ValueTask StartWritebackAsync(CancellationToken ct = default) => ValueTask.CompletedTask;

    /// <summary>Truncates or extends the file. <paramref name="prealloc"/> allocates the extension.</summary>
    ValueTask SetLengthAsync(long length, Preallocation prealloc = Preallocation.Off, CancellationToken ct = default);

    /// <summary>
    /// Whether the range starting at <paramref name="offset"/> holds data or a hole, and for how many
    /// bytes (at most <paramref name="length"/>, at least 1 unless past the end). Uses SEEK_DATA/SEEK_HOLE.
    /// </summary>
    ValueTask<StorageExtent> GetExtentAsync(long offset, long length, CancellationToken ct = default);

    /// <summary>Bytes the file occupies on the host (st_blocks * 512), as qemu-img's "disk size".</summary>
    long AllocatedBytes { get; }
}

public enum Preallocation { Off, Metadata, Falloc, Full }

/// <param name="IsData">False for a hole (reads as zero, no host space).</param>
public readonly record struct StorageExtent(bool IsData, long Length);
