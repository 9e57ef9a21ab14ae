using System.Buffers;
using System.Collections.Concurrent;

namespace Strata.Nbd.Server;

/// <summary>
/// Receive buffers for the request pipes: blocks of one size, kept with their owner objects so that a socket read
/// allocates nothing. Larger requests get a plain array. Shared by every connection of a server.
/// </summary>
internal sealed class SegmentPool(int blockSize) : MemoryPool<byte>
{
    private const int MaxRetained = 256;
    private readonly ConcurrentStack<Block> _free = new();

    public override int MaxBufferSize => int.MaxValue;

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
    {
        if (minBufferSize > blockSize)
            return new Block(this, new byte[minBufferSize], pooled: false);
        if (_free.TryPop(out var block))
        {
            block.Rented = true;
            return block;
        }
        return new Block(this, new byte[blockSize], pooled: true);
    }

    protected override void Dispose(bool disposing) => _free.Clear();

    private void Return(Block block)
    {
        if (_free.Count < MaxRetained)
            _free.Push(block);
    }

    private sealed class Block(SegmentPool pool, byte[] array, bool pooled) : IMemoryOwner<byte>
    {
        public bool Rented = true;

        public Memory<byte> Memory => array;

        public void Dispose()
        {
            if (!Rented)
                return;
            Rented = false;
            if (pooled)
                pool.Return(this);
        }
    }
}
