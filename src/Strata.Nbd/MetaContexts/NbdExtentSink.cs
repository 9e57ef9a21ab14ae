namespace Strata.Nbd.MetaContexts;

/// <summary>
/// Collects the extents of one BLOCK_STATUS chunk, as QEMU's NBDExtentArray: a new extent with the flags of the
/// previous one is merged into it (while the sum fits in 32 bits); once <see cref="Capacity"/> extents are held,
/// <see cref="TryAdd"/> refuses and the reply stops short (the client asks again for the rest).
/// </summary>
public sealed class NbdExtentSink
{
    private uint[] _pairs = new uint[32];

    internal NbdExtentSink()
    {
    }

    /// <summary>Extents held so far.</summary>
    public int Count { get; private set; }

    /// <summary>Most extents this chunk may hold (1 with NBD_CMD_FLAG_REQ_ONE).</summary>
    public int Capacity { get; private set; }

    /// <summary>Bytes covered by the extents held.</summary>
    public long TotalLength { get; private set; }

    /// <summary>True once an extent was refused: add nothing more.</summary>
    public bool IsFull { get; private set; }

    /// <summary>Appends (or merges) an extent of <paramref name="length"/> bytes; false when the chunk is full.</summary>
    public bool TryAdd(long length, uint flags)
    {
        if (IsFull)
            return false;
        if (length <= 0)
            return true;
        if (Count > 0 && _pairs[2 * Count - 1] == flags)
        {
            ulong sum = (ulong)length + _pairs[2 * Count - 2];
            if (sum <= uint.MaxValue)
            {
                _pairs[2 * Count - 2] = (uint)sum;
                TotalLength += length;
                return true;
            }
        }
        if (Count >= Capacity || length > uint.MaxValue)
        {
            IsFull = true;
            return false;
        }
        if (2 * Count + 2 > _pairs.Length)
            Array.Resize(ref _pairs, Math.Min(_pairs.Length * 2, 2 * Protocol.NbdConstants.MaxBlockStatusExtents));
        _pairs[2 * Count] = (uint)length;
        _pairs[2 * Count + 1] = flags;
        Count++;
        TotalLength += length;
        return true;
    }

    internal void Reset(int capacity)
    {
        Capacity = capacity;
        Count = 0;
        TotalLength = 0;
        IsFull = false;
    }

    /// <summary>Length and flags of extent <paramref name="index"/>.</summary>
    public (uint Length, uint Flags) this[int index]
    {
        get
        {
            ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)index, (uint)Count, nameof(index));
            return (_pairs[2 * index], _pairs[2 * index + 1]);
        }
    }

    /// <summary>Writes the extents big-endian (u32 length, u32 flags each) into <paramref name="destination"/>.</summary>
    internal void Encode(Span<byte> destination)
    {
        for (int i = 0; i < 2 * Count; i++)
            System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(destination[(4 * i)..], _pairs[i]);
    }
}
