using System.Buffers;
using System.Numerics;
using System.Runtime.InteropServices;

namespace Strata.Images.Storage;

/// <summary>
/// Native memory whose address is a multiple of <see cref="Alignment"/>, as O_DIRECT needs.
/// Always pinned, so <see cref="MemoryManager{T}.Memory"/> can go straight to the kernel.
/// Contents start undefined; the owner must dispose it (there is deliberately no finalizer, see CA2015).
/// </summary>
public sealed unsafe class AlignedBuffer : MemoryManager<byte>
{
    private byte* _pointer;

    /// <param name="length">Size in bytes (may be 0).</param>
    /// <param name="alignment">A power of two.</param>
    /// <param name="clear">Zero the contents.</param>
    public AlignedBuffer(int length, int alignment, bool clear = false)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        if (alignment <= 0 || !BitOperations.IsPow2(alignment))
            throw new ArgumentOutOfRangeException(nameof(alignment), alignment, "Alignment must be a positive power of two.");
        // AlignedAlloc(0) may return null; allocate at least one byte so the pointer is always valid.
        _pointer = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(length, 1), (nuint)alignment);
        Length = length;
        Alignment = alignment;
        if (clear)
            NativeMemory.Clear(_pointer, (nuint)length);
    }

    public int Length { get; }

    public int Alignment { get; }

    public bool IsDisposed => _pointer == null;

    /// <summary>The buffer's address (valid until disposed).</summary>
    public nint Address
    {
        get
        {
            ObjectDisposedException.ThrowIf(_pointer == null, this);
            return (nint)_pointer;
        }
    }

    public override Span<byte> GetSpan()
    {
        ObjectDisposedException.ThrowIf(_pointer == null, this);
        return new Span<byte>(_pointer, Length);
    }

    public override MemoryHandle Pin(int elementIndex = 0)
    {
        ObjectDisposedException.ThrowIf(_pointer == null, this);
        ArgumentOutOfRangeException.ThrowIfNegative(elementIndex);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(elementIndex, Length);
        // Passing this as the pinnable keeps the manager reachable while the handle is alive.
        return new MemoryHandle(_pointer + elementIndex, default, this);
    }

    /// <summary>Nothing to do: native memory never moves.</summary>
    public override void Unpin()
    {
    }

    /// <summary>Frees the memory. Any <see cref="Memory{T}"/> or span over it must no longer be used.</summary>
    public void Dispose() => ((IDisposable)this).Dispose();

    protected override void Dispose(bool disposing)
    {
        byte* pointer = _pointer;
        _pointer = null;
        if (pointer != null)
            NativeMemory.AlignedFree(pointer);
    }
}
