using Strata.Images.Format;
using Strata.Images.Storage;

namespace Strata.Images.Raw;

/// <summary>A raw image: guest offset = host offset; holes in the file read as zeroes.</summary>
public sealed class RawImage : IImage
{
    private readonly IStorage _file;
    private bool _disposed;

    public RawImage(IStorage file) => _file = file;

    public string FormatName => "raw";
    public string FileName => _file.Name;
    public IStorage Storage => _file;
    public long Size => _file.Length;
    public bool IsReadOnly => _file.IsReadOnly;
    public IImage? Backing => null;
    public string? BackingFileName => null;
    public string? BackingFormat => null;
    public int AllocationGranularity => 1;

    private void CheckRange(long offset, long length)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        long size = Size;
        if (offset < 0 || length < 0 || offset > size || length > size - offset)
            throw new ArgumentOutOfRangeException(nameof(offset), $"Request [{offset}, +{length}) lies outside the {size}-byte disk of '{_file.Name}'");
    }

    private void CheckWritable()
    {
        if (_file.IsReadOnly)
            throw new ImageException($"'{_file.Name}' is opened read-only");
    }

    public ValueTask ReadAsync(Memory<byte> buffer, long offset, CancellationToken ct = default)
    {
        CheckRange(offset, buffer.Length);
        return _file.ReadAsync(buffer, offset, ct);
    }

    public async ValueTask WriteAsync(ReadOnlyMemory<byte> data, long offset, WriteFlags flags = WriteFlags.None, CancellationToken ct = default)
    {
        CheckRange(offset, data.Length);
        CheckWritable();
        await _file.WriteAsync(data, offset, ct).ConfigureAwait(false);
        if ((flags & WriteFlags.Fua) != 0)
            await _file.FlushAsync(ct).ConfigureAwait(false);
    }

    public async ValueTask WriteZeroesAsync(long offset, long length, ZeroFlags flags = ZeroFlags.None, CancellationToken ct = default)
    {
        CheckRange(offset, length);
        CheckWritable();
        await _file.WriteZeroesAsync(offset, length, (flags & ZeroFlags.MayUnmap) != 0, ct).ConfigureAwait(false);
        if ((flags & ZeroFlags.Fua) != 0)
            await _file.FlushAsync(ct).ConfigureAwait(false);
    }

    public ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default)
    {
        CheckRange(offset, length);
        CheckWritable();
        return _file.DiscardAsync(offset, length, ct);
    }

    public ValueTask FlushAsync(CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return _file.IsReadOnly ? ValueTask.CompletedTask : _file.FlushAsync(ct);
    }

    public async ValueTask<BlockStatus> GetBlockStatusAsync(long offset, long length, CancellationToken ct = default)
    {
        CheckRange(offset, length);
        if (length == 0)
            return new BlockStatus(BlockState.Data, 0, offset, Allocated: true);
        var e = await _file.GetExtentAsync(offset, length, ct).ConfigureAwait(false);
        long len = Math.Max(1, Math.Min(e.Length, length));
        return e.IsData
            ? new BlockStatus(BlockState.Data, len, offset, Allocated: true)
            : new BlockStatus(BlockState.Zero, len, offset, Allocated: true);
    }

    public ValueTask ResizeAsync(long newSize, bool allowShrink, Preallocation prealloc = Preallocation.Off, CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        CheckWritable();
        if (newSize < 0)
            throw new ArgumentException($"Invalid size {newSize} for '{_file.Name}'");
        if (newSize < Size && !allowShrink)
            throw new ImageException($"Use the --shrink option to perform a shrink operation on '{_file.Name}'");
        return _file.SetLengthAsync(newSize, prealloc, ct);
    }

    public ValueTask DisposeAsync()
    {
        if (_disposed)
            return ValueTask.CompletedTask;
        _disposed = true;
        return _file.DisposeAsync();
    }
}
