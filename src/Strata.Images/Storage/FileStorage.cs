using System.Buffers;
using System.Collections.Concurrent;
using System.Numerics;
using System.Runtime.CompilerServices;
using Microsoft.Win32.SafeHandles;
using static Strata.Images.Storage.LinuxNative;

namespace Strata.Images.Storage;

/// <param name="ReadOnly">Open O_RDONLY; every modifying call throws <see cref="InvalidOperationException"/>.</param>
/// <param name="Direct">O_DIRECT, QEMU's cache.direct=on: bypass the host page cache.</param>
/// <param name="NoFlush">QEMU's cache.no-flush=on: <see cref="IStorage.FlushAsync"/> does nothing.</param>
/// <param name="Locking">QEMU's locking option: whether <see cref="FileStorage.Lock"/> takes OFD locks.</param>
public sealed record FileStorageOptions(bool ReadOnly = false, bool Direct = false, bool NoFlush = false, LockingMode Locking = LockingMode.Auto)
{
    public static FileStorageOptions Default { get; } = new();
}

/// <summary>
/// A host file (or block device) on 64-bit Linux, accessed with positional I/O (<see cref="RandomAccess"/>)
/// plus fallocate, SEEK_DATA/SEEK_HOLE and fdatasync through libc.
/// With <see cref="FileStorageOptions.Direct"/> the file is opened O_DIRECT; requests that are not aligned
/// in offset, length or buffer address are still accepted and bounce through aligned buffers.
/// </summary>
public sealed class FileStorage : IStorage
{
    private const int DefaultDirectAlignment = 4096;
    private const int BounceBufferSize = 1 << 20;
    private const int MaxPooledBounceBuffers = 8;
    private const int ZeroBufferSize = 1 << 20;
    private const int RmwLockStripes = 64; // power of two
    private const uint CreateMode = 0x1A4; // 0644, as qemu-img creates files

    private static AlignedBuffer? s_zeroes;

    private readonly SafeFileHandle _handle;
    private readonly bool _direct;
    private readonly bool _noFlush;
    private readonly int _alignment;
    private readonly int _alignmentShift;
    private readonly int _bounceSize;
    private readonly Action _fdatasync;

    // Direct mode only: bounce buffers, and the locks that make read-modify-write of a partially
    // written block atomic against other partial writes to the same block (striped by block index).
    private readonly ConcurrentQueue<AlignedBuffer>? _bouncePool;
    private readonly SemaphoreSlim[]? _rmwLocks;

    // _length: end of the file as completed writes and resizes left it (what Length reports).
    // _reservedEnd: the largest end any started write may produce. Writes raise it before they are
    // issued; anything that ftruncates (trimming O_DIRECT tail padding, extending after a punch)
    // truncates to no less than it under _tailLock, so it can never cut off a concurrent write.
    private readonly Lock _tailLock = new();
    private long _length;
    private long _reservedEnd;

    // Set once the file system has said it cannot do something, so we stop asking (like QEMU's has_* flags).
    private volatile bool _noPunchHole;
    private volatile bool _noZeroRange;
    private volatile bool _noFallocate;
    private int _disposed;

    // QEMU's write_gen/flushed_gen: changes completed so far, and how many of them the last fdatasync covered.
    // A flush with nothing completed since the last one is skipped, as bdrv_co_flush does.
    private long _writeGen;
    private long _flushedGen;
    private long _fdatasyncs;

    /// <summary>fdatasync calls made so far (tests check that skipped flushes really are skipped).</summary>
    internal long FdatasyncCount => Volatile.Read(ref _fdatasyncs);

    private FileStorage(string path, SafeFileHandle handle, FileStorageOptions options, int alignment, long length)
    {
        Name = path;
        _handle = handle;
        IsReadOnly = options.ReadOnly;
        _direct = options.Direct;
        _noFlush = options.NoFlush;
        _alignment = alignment;
        _alignmentShift = BitOperations.Log2((uint)alignment);
        _length = length;
        _reservedEnd = length;
        _fdatasync = Fdatasync;
        _bounceSize = Math.Max(BounceBufferSize, alignment);
        Lock = new ImageLock(handle, path, options.Locking);
        if (_direct)
        {
            _bouncePool = new ConcurrentQueue<AlignedBuffer>();
            _rmwLocks = new SemaphoreSlim[RmwLockStripes];
            for (int i = 0; i < _rmwLocks.Length; i++)
                _rmwLocks[i] = new SemaphoreSlim(1, 1);
        }
    }

    /// <summary>Opens an existing file (or block device).</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="IOException">It cannot be opened; the message names the file and the reason.</exception>
    public static FileStorage Open(string path, FileStorageOptions options) => OpenCore(path, options, create: false);

    /// <summary>
    /// Creates the file, or truncates an existing one to 0 bytes, and opens it read-write. As QEMU's raw_co_create, an
    /// existing file is truncated only after taking its write and resize locks (unless locking is off), so a file another
    /// process has open is left alone; the locks are dropped again before returning.
    /// </summary>
    /// <exception cref="ImageLockException">Another process holds the file.</exception>
    public static FileStorage Create(string path, FileStorageOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.ReadOnly)
            throw new ArgumentException("A file cannot be created read-only.", nameof(options));
        var file = OpenCore(path, options, create: true);
        try
        {
            if (file.Lock.Enabled)
            {
                // The creator writes and sizes the file, and cannot let anyone resize it meanwhile.
                file.Lock.Set(LockPermissions.Write | LockPermissions.Resize, LockPermissions.All & ~LockPermissions.Resize);
            }
            // Only regular files are emptied: O_TRUNC, which this replaces, leaves devices alone too.
            if (file.Length != 0 && Fstatx(file._handle, STATX_TYPE, out Statx st) == 0 && (st.Mode & S_IFMT) == S_IFREG)
            {
                int errno = Ftruncate(file._handle, 0);
                if (errno != 0)
                    throw new IOException($"Could not truncate '{path}': {Describe(errno)}", errno);
                file._length = file._reservedEnd = 0;
                file._writeGen = 1; // the truncation is a change a first flush must cover
            }
            file.Lock.Set(LockPermissions.None, LockPermissions.All);
            return file;
        }
        catch
        {
            file._handle.Dispose();
            throw;
        }
    }

    public string Name { get; }

    /// <summary>QEMU's image locks on this open file: none are held until a user sets permissions.</summary>
    public ImageLock Lock { get; }

    /// <summary>Told of every write, zeroing, discard and resize (the owning node's dirty bitmaps); null for none.</summary>
    public IStorageObserver? Observer { get; set; }

    public bool IsReadOnly { get; }

    public int RequestAlignment => _alignment;

    public long Length => Volatile.Read(ref _length);

    public long AllocatedBytes
    {
        get
        {
            int errno = Fstatx(_handle, STATX_BLOCKS, out Statx st);
            if (errno != 0)
                throw Error("stat", errno);
            return checked((long)st.Blocks * 512);
        }
    }

    private static FileStorage OpenCore(string path, FileStorageOptions options, bool create)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(options);
        if (!OperatingSystem.IsLinux() || !Environment.Is64BitProcess)
            throw new PlatformNotSupportedException("FileStorage needs 64-bit Linux.");

        int flags = (options.ReadOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC;
        if (create)
            flags |= O_CREAT; // truncated by Create once the file's locks allow it
        if (options.Direct)
            flags |= ODirect;

        int fd = LinuxNative.Open(path, flags, CreateMode);
        if (fd < 0)
        {
            int errno = -fd;
            if (errno == EINVAL && options.Direct)
                throw new IOException($"Could not open '{path}': the file system does not support O_DIRECT (cache.direct=on)", errno);
            string message = $"Could not {(create ? "create" : "open")} '{path}': {Describe(errno)}";
            throw errno == ENOENT ? new FileNotFoundException(message, path) : new IOException(message, errno);
        }

        var handle = new SafeFileHandle(fd, ownsHandle: true);
        try
        {
            int errno = Fstatx(handle, STATX_TYPE | (options.Direct ? STATX_DIOALIGN : 0), out Statx st);
            if (errno != 0)
                throw new IOException($"Could not stat '{path}': {Describe(errno)}", errno);
            if ((st.Mode & S_IFMT) == S_IFDIR)
                throw new IOException($"Could not open '{path}': Is a directory");

            // SEEK_END rather than st_size so block devices report their size too.
            long length = Lseek(handle, 0, SEEK_END);
            if (length < 0)
                throw new IOException($"Could not get the size of '{path}': {Describe((int)-length)}", (int)-length);

            int alignment = options.Direct ? DirectAlignment(st) : 1;
            return new FileStorage(path, handle, options, alignment, length);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>The kernel reports O_DIRECT alignment through statx since Linux 6.1; otherwise assume 4096, which every device accepts.</summary>
    private static int DirectAlignment(in Statx st)
    {
        if ((st.Mask & STATX_DIOALIGN) == 0 || st.DioOffsetAlign == 0)
            return DefaultDirectAlignment;
        uint alignment = Math.Max(st.DioOffsetAlign, st.DioMemAlign);
        return BitOperations.IsPow2(alignment) && alignment <= 1 << 20 ? (int)alignment : DefaultDirectAlignment;
    }

    // ------------------------------------------------------------------ read

    public ValueTask ReadAsync(Memory<byte> buffer, long offset, CancellationToken ct = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        if (buffer.IsEmpty)
            return ValueTask.CompletedTask;
        return _direct ? ReadDirectAsync(buffer, offset, ct) : ReadFullAsync(buffer, offset, ct);
    }

    /// <summary>
    /// Reads until the buffer is full; what lies past the end of the file reads as zero.
    /// In direct mode the request is aligned and a read ending mid-block can only be EOF.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ReadFullAsync(Memory<byte> buffer, long offset, CancellationToken ct)
    {
        int done = 0;
        try
        {
            while (done < buffer.Length)
            {
                int n = await RandomAccess.ReadAsync(_handle, buffer[done..], offset + done, ct);
                if (n == 0)
                    break;
                done += n;
                if (_direct && (done & (_alignment - 1)) != 0)
                    break;
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw Wrap("read", ex);
        }
        buffer.Span[done..].Clear();
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ReadDirectAsync(Memory<byte> buffer, long offset, CancellationToken ct)
    {
        if (IsAligned(offset) && IsAligned(buffer.Length))
        {
            // The pin is held across the I/O so the address checked stays the address used.
            using MemoryHandle pin = buffer.Pin();
            if (IsAligned(pin))
            {
                await ReadFullAsync(buffer, offset, ct);
                return;
            }
        }

        long end = offset + buffer.Length;
        long alignedEnd = AlignUp(end);
        AlignedBuffer bounce = RentBounce();
        try
        {
            for (long chunkStart = AlignDown(offset); chunkStart < alignedEnd;)
            {
                int chunkLength = (int)Math.Min(_bounceSize, alignedEnd - chunkStart);
                await ReadFullAsync(bounce.Memory[..chunkLength], chunkStart, ct);
                long from = Math.Max(offset, chunkStart);
                long to = Math.Min(end, chunkStart + chunkLength);
                bounce.GetSpan().Slice((int)(from - chunkStart), (int)(to - from)).CopyTo(buffer.Span[(int)(from - offset)..]);
                chunkStart += chunkLength;
            }
        }
        finally
        {
            ReturnBounce(bounce);
        }
    }

    // ------------------------------------------------------------------ write

    public ValueTask WriteAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken ct = default)
    {
        ThrowIfReadOnly();
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        if (data.IsEmpty)
            return ValueTask.CompletedTask;
        Observer?.Changing(offset, data.Length, discard: false);
        ValueTask write = WriteCoreAsync(data, offset, ct);
        if (!write.IsCompleted)
            return CountWhenDoneAsync(write);
        Interlocked.Increment(ref _writeGen);
        return write;
    }

    /// <summary>
    /// Writes each buffer at its offset, in list order, back to back on one pool thread (with O_DIRECT one by one,
    /// as <see cref="WriteAsync"/>): for metadata whose pieces should reach the file as close together as possible,
    /// since a process killed between two of them leaves the file with only the first.
    /// </summary>
    public async ValueTask WriteManyAsync(IReadOnlyList<(ReadOnlyMemory<byte> Data, long Offset)> writes, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(writes);
        ThrowIfReadOnly();
        if (_direct)
        {
            foreach (var (data, offset) in writes)
                await WriteAsync(data, offset, ct).ConfigureAwait(false);
            return;
        }
        long end = 0;
        foreach (var (data, offset) in writes)
        {
            ArgumentOutOfRangeException.ThrowIfNegative(offset);
            end = Math.Max(end, offset + data.Length);
            Observer?.Changing(offset, data.Length, discard: false);
        }
        ReserveEnd(end);
        try
        {
            await Task.Run(() =>
            {
                foreach (var (data, offset) in writes)
                    RandomAccess.Write(_handle, data.Span, offset);
            }, ct).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw Wrap("write", ex);
        }
        finally
        {
            Interlocked.Increment(ref _writeGen);
        }
        RaiseLength(end);
    }

    /// <summary>Counts a change once it completed (failed or not: part of it may have reached the file).</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask CountWhenDoneAsync(ValueTask change)
    {
        try
        {
            await change;
        }
        finally
        {
            Interlocked.Increment(ref _writeGen);
        }
    }

    private ValueTask WriteCoreAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken ct)
        => _direct ? WriteDirectAsync(data, offset, ct) : WriteBufferedAsync(data, offset, ct);

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteBufferedAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken ct)
    {
        long end = offset + data.Length;
        ReserveEnd(end);
        await WriteRawAsync(data, offset, ct);
        RaiseLength(end);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteDirectAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken ct)
    {
        long end = offset + data.Length;
        ReserveEnd(end);
        if (IsAligned(offset) && IsAligned(data.Length))
        {
            using MemoryHandle pin = data.Pin();
            if (IsAligned(pin))
            {
                await WriteRawAsync(data, offset, ct);
                RaiseLength(end);
                return;
            }
        }
        await WriteBouncedAsync(data, offset, ct);
        RaiseLength(end);
    }

    /// <summary>
    /// Copies the data into aligned chunks. A block the request covers only partly is read first
    /// (read-modify-write) under its stripe lock, so two partial writes to one block cannot lose each other's bytes.
    /// </summary>
    private async ValueTask WriteBouncedAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken ct)
    {
        long end = offset + data.Length;
        long alignedEnd = AlignUp(end);
        AlignedBuffer bounce = RentBounce();
        try
        {
            for (long chunkStart = AlignDown(offset); chunkStart < alignedEnd;)
            {
                int chunkLength = (int)Math.Min(_bounceSize, alignedEnd - chunkStart);
                long chunkEnd = chunkStart + chunkLength;
                long from = Math.Max(offset, chunkStart);
                long to = Math.Min(end, chunkEnd);
                bool partialHead = from > chunkStart;
                bool partialTail = to < chunkEnd;
                Memory<byte> chunk = bounce.Memory[..chunkLength];
                ReadOnlyMemory<byte> piece = data.Slice((int)(from - offset), (int)(to - from));

                if (!partialHead && !partialTail)
                {
                    piece.Span.CopyTo(chunk.Span);
                    await WriteRawAsync(chunk, chunkStart, ct);
                }
                else
                {
                    long tailBlock = chunkEnd - _alignment;
                    int first = Stripe(partialHead ? chunkStart : tailBlock);
                    int second = Stripe(partialTail ? tailBlock : chunkStart);
                    if (first > second)
                        (first, second) = (second, first);
                    SemaphoreSlim[] locks = _rmwLocks!;
                    await locks[first].WaitAsync(ct);
                    try
                    {
                        if (second != first)
                            await locks[second].WaitAsync(ct);
                        try
                        {
                            if (partialHead)
                                await ReadFullAsync(chunk[.._alignment], chunkStart, ct);
                            if (partialTail && !(partialHead && tailBlock == chunkStart))
                                await ReadFullAsync(chunk[(chunkLength - _alignment)..], tailBlock, ct);
                            piece.Span.CopyTo(chunk.Span[(int)(from - chunkStart)..]);
                            await WriteRawAsync(chunk, chunkStart, ct);
                        }
                        finally
                        {
                            if (second != first)
                                locks[second].Release();
                        }
                    }
                    finally
                    {
                        locks[first].Release();
                    }
                }
                chunkStart = chunkEnd;
            }
        }
        finally
        {
            ReturnBounce(bounce);
        }

        if (alignedEnd > end)
            TrimPadding(alignedEnd);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteRawAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken ct)
    {
        try
        {
            await RandomAccess.WriteAsync(_handle, data, offset, ct);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw Wrap("write", ex);
        }
    }

    /// <summary>
    /// An O_DIRECT write of a padded tail block may have grown the file past every requested end;
    /// cut it back to the largest end any write has reserved so Length matches the file.
    /// </summary>
    private void TrimPadding(long paddedEnd)
    {
        lock (_tailLock)
        {
            long target = _reservedEnd;
            if (paddedEnd <= target)
                return;
            int errno = Ftruncate(_handle, target);
            if (errno != 0)
                throw Error("truncate", errno);
        }
    }

    // ------------------------------------------------------------------ zeroes, discard

    public ValueTask WriteZeroesAsync(long offset, long length, bool mayUnmap, CancellationToken ct = default)
    {
        ThrowIfReadOnly();
        ValidateRange(offset, length);
        if (length == 0)
            return ValueTask.CompletedTask;
        ct.ThrowIfCancellationRequested();
        Observer?.Changing(offset, length, discard: false);
        return CountWhenDoneAsync(WriteZeroesCoreAsync(offset, length, mayUnmap, ct));
    }

    private async ValueTask WriteZeroesCoreAsync(long offset, long length, bool mayUnmap, CancellationToken ct)
    {
        long end = offset + length;

        if (mayUnmap && TryPunchHole(offset, end))
        {
            if (end > Length)
                ExtendTo(end);
            return;
        }

        if (!_noZeroRange)
        {
            // Without KEEP_SIZE, ZERO_RANGE extends the file like a write would.
            ReserveEnd(end);
            int errno = Fallocate(_handle, FALLOC_FL_ZERO_RANGE, offset, length);
            if (errno == 0)
            {
                RaiseLength(end);
                return;
            }
            if (IsUnsupported(errno))
                _noZeroRange = true;
            else if (errno != EINVAL) // EINVAL: not for this file or range; writing zeroes still works
                throw Error("write zeroes to", errno);
        }

        await WriteZeroBytesAsync(offset, length, ct);
    }

    public ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default)
    {
        ThrowIfReadOnly();
        ValidateRange(offset, length);
        if (length == 0)
            return ValueTask.CompletedTask;
        if (ct.IsCancellationRequested)
            return ValueTask.FromCanceled(ct);
        Observer?.Changing(offset, length, discard: true);
        try
        {
            try
            {
                TryPunchHole(offset, offset + length);
            }
            finally
            {
                Interlocked.Increment(ref _writeGen);
            }
            return ValueTask.CompletedTask;
        }
        catch (IOException ex)
        {
            return ValueTask.FromException(ex);
        }
    }

    /// <summary>
    /// Punches the part of [offset, end) inside the file (never past EOF: KEEP_SIZE would still free
    /// blocks preallocated there). False when the file system cannot punch holes.
    /// </summary>
    private bool TryPunchHole(long offset, long end)
    {
        long punchEnd = Math.Min(end, Length);
        if (punchEnd <= offset)
            return true;
        if (_noPunchHole)
            return false;
        int errno = Fallocate(_handle, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, punchEnd - offset);
        if (errno == 0)
            return true;
        if (!IsUnsupported(errno))
            throw Error("discard", errno);
        _noPunchHole = true;
        return false;
    }

    /// <summary>Grows the file to at least <paramref name="end"/> (the new range is a hole).</summary>
    private void ExtendTo(long end)
    {
        lock (_tailLock)
        {
            long target = Math.Max(_reservedEnd, end);
            int errno = Ftruncate(_handle, target);
            if (errno != 0)
                throw Error("resize", errno);
            Volatile.Write(ref _reservedEnd, target);
        }
        RaiseLength(end);
    }

    /// <summary>The fallback: writes zero bytes from a shared zero buffer, keeping the big middle part aligned.</summary>
    private async ValueTask WriteZeroBytesAsync(long offset, long length, CancellationToken ct)
    {
        ReadOnlyMemory<byte> zeroes = Zeroes;
        long end = offset + length;
        long position = offset;
        long headEnd = Math.Min(end, AlignUp(offset));
        long bodyEnd = Math.Max(headEnd, AlignDown(end));
        if (headEnd > position)
        {
            await WriteCoreAsync(zeroes[..(int)(headEnd - position)], position, ct);
            position = headEnd;
        }
        while (position < bodyEnd)
        {
            int n = (int)Math.Min(zeroes.Length, bodyEnd - position);
            await WriteCoreAsync(zeroes[..n], position, ct);
            position += n;
        }
        if (end > position)
            await WriteCoreAsync(zeroes[..(int)(end - position)], position, ct);
    }

    // ------------------------------------------------------------------ flush, resize

    public ValueTask FlushAsync(CancellationToken ct = default)
    {
        if (_noFlush || IsReadOnly)
            return ValueTask.CompletedTask;
        if (Volatile.Read(ref _writeGen) == Volatile.Read(ref _flushedGen))
            return ct.IsCancellationRequested ? ValueTask.FromCanceled(ct) : ValueTask.CompletedTask;
        // fdatasync has no asynchronous form; it blocks a pool thread, not the caller.
        return new ValueTask(Task.Run(_fdatasync, ct));
    }

    /// <summary>sync_file_range(SYNC_FILE_RANGE_WRITE) over the whole file: starts writeback, waits for nothing durable.</summary>
    public ValueTask StartWritebackAsync(CancellationToken ct = default)
    {
        if (_noFlush || IsReadOnly || _direct)
            return ValueTask.CompletedTask;
        // It may block while the device queue is full: a pool thread waits, not the caller.
        return new ValueTask(Task.Run(() => LinuxNative.StartWriteback(_handle), ct));
    }

    private void Fdatasync()
    {
        // Only changes completed before the call are known to be covered.
        long gen = Volatile.Read(ref _writeGen);
        Interlocked.Increment(ref _fdatasyncs);
        int errno = LinuxNative.Fdatasync(_handle);
        if (errno != 0)
            throw Error("flush", errno);
        long seen = Volatile.Read(ref _flushedGen);
        while (seen < gen)
        {
            long was = Interlocked.CompareExchange(ref _flushedGen, gen, seen);
            if (was == seen)
                break;
            seen = was;
        }
    }

    public ValueTask SetLengthAsync(long length, Preallocation prealloc = Preallocation.Off, CancellationToken ct = default)
    {
        ThrowIfReadOnly();
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ct.ThrowIfCancellationRequested();
        return CountWhenDoneAsync(SetLengthAndTellAsync(length, prealloc, ct));
    }

    private async ValueTask SetLengthAndTellAsync(long length, Preallocation prealloc, CancellationToken ct)
    {
        await SetLengthCoreAsync(length, prealloc, ct).ConfigureAwait(false);
        Observer?.Resized(length);
    }

    private async ValueTask SetLengthCoreAsync(long length, Preallocation prealloc, CancellationToken ct)
    {

        long oldLength;
        lock (_tailLock)
        {
            int errno = Ftruncate(_handle, length);
            if (errno != 0)
                throw Error("resize", errno);
            oldLength = Interlocked.Exchange(ref _length, length);
            Volatile.Write(ref _reservedEnd, length);
        }
        if (length <= oldLength || prealloc is Preallocation.Off or Preallocation.Metadata)
            return;

        try
        {
            if (prealloc == Preallocation.Falloc && !_noFallocate)
            {
                int errno = Fallocate(_handle, 0, oldLength, length - oldLength);
                if (errno == 0)
                    return;
                if (!IsUnsupported(errno))
                    throw Error("preallocate", errno);
                _noFallocate = true;
            }
            // Full, or falloc where the file system has no fallocate: allocate by writing zeroes.
            await WriteZeroBytesAsync(oldLength, length - oldLength, ct);
        }
        catch
        {
            // Like QEMU: a failed preallocation leaves the file at its old length.
            lock (_tailLock)
            {
                if (Ftruncate(_handle, oldLength) == 0)
                {
                    Volatile.Write(ref _length, oldLength);
                    Volatile.Write(ref _reservedEnd, oldLength);
                }
            }
            throw;
        }
    }

    // ------------------------------------------------------------------ block status

    public ValueTask<StorageExtent> GetExtentAsync(long offset, long length, CancellationToken ct = default)
    {
        ValidateRange(offset, length);
        if (ct.IsCancellationRequested)
            return ValueTask.FromCanceled<StorageExtent>(ct);
        try
        {
            return ValueTask.FromResult(GetExtent(offset, length));
        }
        catch (IOException ex)
        {
            return ValueTask.FromException<StorageExtent>(ex);
        }
    }

    private StorageExtent GetExtent(long offset, long length)
    {
        long eof = Length;
        if (offset >= eof)
            return new StorageExtent(false, length);
        long max = Math.Min(length, eof - offset);
        if (max == 0)
            return new StorageExtent(true, 0);

        long data = Lseek(_handle, offset, SEEK_DATA);
        if (data < 0)
        {
            int errno = (int)-data;
            if (errno == ENXIO)
                return new StorageExtent(false, max); // no data between offset and EOF
            if (errno == EINVAL || IsUnsupported(errno))
                return new StorageExtent(true, max); // no SEEK_DATA here: everything is data
            throw Error("get the allocation status of", errno);
        }
        if (data > offset)
            return new StorageExtent(false, Math.Min(data - offset, max));

        long hole = Lseek(_handle, offset, SEEK_HOLE);
        if (hole < 0)
        {
            int errno = (int)-hole;
            if (errno == ENXIO || errno == EINVAL || IsUnsupported(errno))
                return new StorageExtent(true, max);
            throw Error("get the allocation status of", errno);
        }
        // hole <= offset: the range was punched between the two calls; calling it data is always safe.
        return new StorageExtent(true, hole > offset ? Math.Min(hole - offset, max) : max);
    }

    // ------------------------------------------------------------------ lifetime

    public ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return ValueTask.CompletedTask;
        _handle.Dispose();
        DrainBouncePool();
        if (_rmwLocks is not null)
        {
            foreach (SemaphoreSlim semaphore in _rmwLocks)
                semaphore.Dispose();
        }
        return ValueTask.CompletedTask;
    }

    public override string ToString() => Name;

    // ------------------------------------------------------------------ helpers

    private static ReadOnlyMemory<byte> Zeroes
    {
        get
        {
            AlignedBuffer? zeroes = Volatile.Read(ref s_zeroes);
            if (zeroes is null)
            {
                // Lives for the process; shared read-only by every storage.
                var created = new AlignedBuffer(ZeroBufferSize, DefaultDirectAlignment, clear: true);
                zeroes = Interlocked.CompareExchange(ref s_zeroes, created, null) ?? created;
                if (!ReferenceEquals(zeroes, created))
                    created.Dispose();
            }
            return zeroes.Memory;
        }
    }

    private AlignedBuffer RentBounce()
        => _bouncePool!.TryDequeue(out AlignedBuffer? buffer)
            ? buffer
            : new AlignedBuffer(_bounceSize, Math.Max(_alignment, DefaultDirectAlignment));

    private void ReturnBounce(AlignedBuffer buffer)
    {
        if (Volatile.Read(ref _disposed) != 0 || _bouncePool!.Count >= MaxPooledBounceBuffers)
        {
            buffer.Dispose();
            return;
        }
        _bouncePool.Enqueue(buffer);
        if (Volatile.Read(ref _disposed) != 0)
            DrainBouncePool(); // lost a race with DisposeAsync
    }

    private void DrainBouncePool()
    {
        if (_bouncePool is null)
            return;
        while (_bouncePool.TryDequeue(out AlignedBuffer? buffer))
            buffer.Dispose();
    }

    private void ReserveEnd(long end)
    {
        if (end <= Volatile.Read(ref _reservedEnd))
            return;
        lock (_tailLock)
        {
            if (end > _reservedEnd)
                Volatile.Write(ref _reservedEnd, end);
        }
    }

    private void RaiseLength(long end)
    {
        long current = Volatile.Read(ref _length);
        while (end > current)
        {
            long seen = Interlocked.CompareExchange(ref _length, end, current);
            if (seen == current)
                return;
            current = seen;
        }
    }

    private bool IsAligned(long value) => (value & (_alignment - 1)) == 0;

    private unsafe bool IsAligned(in MemoryHandle pin) => ((nuint)pin.Pointer & (nuint)(_alignment - 1)) == 0;

    private long AlignDown(long value) => value & ~(long)(_alignment - 1);

    private long AlignUp(long value) => (value + _alignment - 1) & ~(long)(_alignment - 1);

    private int Stripe(long blockOffset) => (int)((blockOffset >> _alignmentShift) & (RmwLockStripes - 1));

    private static bool IsUnsupported(int errno) => errno is EOPNOTSUPP or ENOSYS;

    private static void ValidateRange(long offset, long length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        if (offset > long.MaxValue - length)
            throw new ArgumentOutOfRangeException(nameof(length), length, "offset + length overflows.");
    }

    private void ThrowIfReadOnly()
    {
        if (IsReadOnly)
            throw new InvalidOperationException($"'{Name}' is opened read-only.");
    }

    private IOException Error(string action, int errno)
        => new($"Could not {action} '{Name}': {Describe(errno)}", errno);

    /// <summary>Rewords .NET's exception ("No space left on device") so it names the file and the action.</summary>
    private IOException Wrap(string action, Exception ex)
    {
        // On Unix .NET puts the raw errno in IOException.HResult.
        string reason = ex is IOException && ex.HResult is > 0 and < 4096 ? Describe(ex.HResult) : ex.Message;
        return new IOException($"Could not {action} '{Name}': {reason}", ex);
    }
}
