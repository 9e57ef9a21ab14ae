using System.Buffers;
using Strata.Images.Storage;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

public sealed partial class Qcow2Image
{
    public ValueTask ReadAsync(Memory<byte> buffer, long offset, CancellationToken ct = default)
    {
        CheckRange(offset, buffer.Length);
        return ReadCoreAsync(buffer, offset, lockHeld: false, ct);
    }

    /// <summary>
    /// The guest view of this layer and its backing chain. With <paramref name="lockHeld"/> the caller already
    /// holds the metadata lock (copy-on-write reads the old contents this way).
    /// </summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ReadCoreAsync(Memory<byte> buffer, long offset, bool lockHeld, CancellationToken ct)
    {
        while (buffer.Length > 0)
        {
            Run run;
            bool counted = false;
            if (lockHeld)
                run = await GetRunAsync(offset, buffer.Length, ct).ConfigureAwait(false);
            else
            {
                await _lock.WaitAsync(ct).ConfigureAwait(false);
                try
                {
                    run = await GetRunAsync(offset, buffer.Length, ct).ConfigureAwait(false);
                    if (run.Kind is RunKind.Data or RunKind.Compressed)
                    {
                        // A concurrent discard must not free (and let others reuse) the clusters we are about to read.
                        BeginHostIo();
                        counted = true;
                    }
                }
                finally
                {
                    Unlock();
                }
            }
            var part = buffer[..(int)run.Length];
            try
            {
                await ReadRunAsync(run, part, offset, ct).ConfigureAwait(false);
            }
            finally
            {
                if (counted)
                    EndHostIo();
            }
            buffer = buffer[(int)run.Length..];
            offset += run.Length;
        }
    }

    private ValueTask ReadRunAsync(Run run, Memory<byte> part, long offset, CancellationToken ct)
    {
        switch (run.Kind)
        {
            case RunKind.Data:
                _file.Event(DebugEvent.ReadAio);
                return _file.ReadAsync(part, run.Host, ct);
            case RunKind.Zero:
                part.Span.Clear();
                return ValueTask.CompletedTask;
            case RunKind.Unallocated:
                return ReadBackingAsync(part, offset, ct);
            default:
                return ReadCompressedAsync(run.Entry, part, (int)(offset & (_cs - 1)), ct);
        }
    }

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ReadBackingAsync(Memory<byte> part, long offset, CancellationToken ct)
    {
        var backing = _backing;
        if (backing == null || offset >= backing.Size)
        {
            part.Span.Clear();
            return;
        }
        int n = (int)Math.Min(part.Length, backing.Size - offset);
        await backing.ReadAsync(part[..n], offset, ct).ConfigureAwait(false);
        part.Span[n..].Clear();
    }

    private async ValueTask ReadCompressedAsync(ulong entry, Memory<byte> dest, int inCluster, CancellationToken ct)
    {
        var (off, bytes) = ParseCompressed(entry);
        if (off + bytes > _file.Length + CompressedSectorSize)
            throw new CorruptImageException($"Compressed cluster at 0x{off:x} ({bytes} bytes) lies past the end of '{_file.Name}'");
        byte[] src = ArrayPool<byte>.Shared.Rent(bytes);
        byte[] cluster = ArrayPool<byte>.Shared.Rent(_cs);
        try
        {
            await _file.ReadAsync(src.AsMemory(0, bytes), off, ct).ConfigureAwait(false);
            try
            {
                Qcow2Compression.Decompress(_h.CompressionType, src.AsSpan(0, bytes), cluster.AsSpan(0, _cs));
            }
            catch (CorruptImageException e)
            {
                throw new CorruptImageException($"Could not decompress the cluster at host offset 0x{off:x} of '{_file.Name}': {e.Message}", e);
            }
            cluster.AsSpan(inCluster, dest.Length).CopyTo(dest.Span);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(src);
            ArrayPool<byte>.Shared.Return(cluster);
        }
    }
}
