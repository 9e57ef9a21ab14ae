namespace Strata.Block;

/// <summary>What kind of failure a block-layer operation hit; protocol adapters map it to their error classes.</summary>
public enum BlockErrorKind
{
    Generic,
    /// <summary>A device, node or job named by the caller does not exist (QMP: DeviceNotFound where QEMU uses it).</summary>
    NotFound,
}

/// <summary>A block-layer operation failed; the message names the node, file or job concerned, in QEMU's words.</summary>
public sealed class BlockException : Exception
{
    public BlockException(string message, BlockErrorKind kind = BlockErrorKind.Generic, Exception? inner = null)
        : base(message, inner) => Kind = kind;

    public BlockException() { }
    public BlockException(string message) : base(message) { }
    public BlockException(string message, Exception inner) : base(message, inner) { }

    public BlockErrorKind Kind { get; }

    /// <summary>QEMU's error hint (e.g. "Is another process using the image [x]?"): command lines print it on its own line, QMP drops it.</summary>
    public string? Hint { get; init; }
}
