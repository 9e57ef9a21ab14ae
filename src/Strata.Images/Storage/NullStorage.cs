namespace Strata.Images.Storage;

/// <summary>
/// Storage with nothing behind it, like QEMU's null-co driver: writes are dropped, reads return zeroes
/// (or, with readZeroes off, leave the buffer untouched, which is cheaper still), everything completes at once.
/// For benchmarking the layers above storage.
/// </summary>
public sealed class NullStorage : IStorage
{
    private readonly bool _readZeroes;
    private long _length;

    /// <param name="length">The length reported; writes do not change it, <see cref="SetLengthAsync"/> does.</param>
    /// <param name="readZeroes">Clear read buffers (QEMU's read-zeroes option); false leaves them as they were.</param>
    /// <param name="name">Used in messages.</param>
    public NullStorage(long length, bool readZeroes = true, string name = "null-co://")
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ArgumentNullException.ThrowIfNull(name);
        _length = length;
        _readZeroes = readZeroes;
        Name = name;
    }

    public string Name { get; }

    public bool IsReadOnly => false;

    public int RequestAlignment => 1;

    public long Length => Volatile.Read(ref _length);

    public long AllocatedBytes => 0;

    public ValueTask ReadAsync(Memory<byte> buffer, long offset, CancellationToken ct = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        if (ct.IsCancellationRequested)
            return ValueTask.FromCanceled(ct);
        if (_readZeroes)
            buffer.Span.Clear();
        return ValueTask.CompletedTask;
    }

    public ValueTask WriteAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken ct = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        return ct.IsCancellationRequested ? ValueTask.FromCanceled(ct) : ValueTask.CompletedTask;
    }

    public ValueTask WriteZeroesAsync(long offset, long length, bool mayUnmap, CancellationToken ct = default)
    {
        ValidateRange(offset, length);
        return ct.IsCancellationRequested ? ValueTask.FromCanceled(ct) : ValueTask.CompletedTask;
    }

    public ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default)
    {
        ValidateRange(offset, length);
        return ct.IsCancellationRequested ? ValueTask.FromCanceled(ct) : ValueTask.CompletedTask;
    }

    public ValueTask FlushAsync(CancellationToken ct = default)
        => ct.IsCancellationRequested ? ValueTask.FromCanceled(ct) : ValueTask.CompletedTask;

    public ValueTask SetLengthAsync(long length, Preallocation prealloc = Preallocation.Off, CancellationToken ct = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        if (ct.IsCancellationRequested)
            return ValueTask.FromCanceled(ct);
        Volatile.Write(ref _length, length);
        return ValueTask.CompletedTask;
    }

    /// <summary>
    /// With readZeroes the whole range is a hole (reads as zero, occupies nothing); without it the
    /// contents are undefined, so it is reported as data, which is what callers must then read.
    /// </summary>
    public ValueTask<StorageExtent> GetExtentAsync(long offset, long length, CancellationToken ct = default)
    {
        ValidateRange(offset, length);
        if (ct.IsCancellationRequested)
            return ValueTask.FromCanceled<StorageExtent>(ct);
        long eof = Length;
        if (offset >= eof)
            return ValueTask.FromResult(new StorageExtent(false, length));
        return ValueTask.FromResult(new StorageExtent(!_readZeroes, Math.Min(length, eof - offset)));
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

    public override string ToString() => Name;

    private static void ValidateRange(long offset, long length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        if (offset > long.MaxValue - length)
            throw new ArgumentOutOfRangeException(nameof(length), length, "offset + length overflows.");
    }
}
