using System.Text.Json.Nodes;
using Strata.Images.Qcow2;
using Strata.Images.Storage;

namespace Strata.Block.Jobs;

/// <summary>What blockdev-create is asked to create (BlockdevCreateOptions), by driver.</summary>
public abstract record CreateRequest
{
    /// <summary>The driver name, as in BlockdevDriver.</summary>
    public abstract string Driver { get; }
}

/// <summary>A node named by the user, or options for a node opened just for the job (BlockdevRef).</summary>
public sealed record NodeReference(string? NodeName, JsonObject? Options = null)
{
    public static implicit operator NodeReference(string nodeName) => new(nodeName);
}

/// <summary>BlockdevCreateOptionsFile: a host file of <see cref="Size"/> bytes. Sizes are QAPI's unsigned sizes.</summary>
public sealed record FileCreateRequest(string Filename, ulong Size) : CreateRequest
{
    public override string Driver => "file";

    public Preallocation Preallocation { get; init; }

    /// <summary>Ask the file system not to copy on write (btrfs); ignored where unsupported, as in QEMU.</summary>
    public bool Nocow { get; init; }

    /// <summary>The extent size hint (XFS); at most 4 GiB - 1.</summary>
    public ulong? ExtentSizeHint { get; init; }
}

/// <summary>Encryption asked of a qcow2 image (QCryptoBlockCreateOptions): the format and the secret's id.</summary>
public sealed record EncryptionRequest(string Format, string? KeySecret);

/// <summary>BlockdevCreateOptionsQcow2: formats the node <see cref="File"/> as qcow2. Null members take QEMU's defaults.</summary>
public sealed record Qcow2CreateRequest(NodeReference File, ulong Size) : CreateRequest
{
    public override string Driver => "qcow2";

    public NodeReference? DataFile { get; init; }

    public bool? DataFileRaw { get; init; }

    public bool? ExtendedL2 { get; init; }

    /// <summary>2 or 3.</summary>
    public int? Version { get; init; }

    public string? BackingFile { get; init; }

    public string? BackingFormat { get; init; }

    public EncryptionRequest? Encrypt { get; init; }

    public ulong? ClusterSize { get; init; }

    public Preallocation? Preallocation { get; init; }

    public bool? LazyRefcounts { get; init; }

    public long? RefcountBits { get; init; }

    public CompressionType? CompressionType { get; init; }
}
