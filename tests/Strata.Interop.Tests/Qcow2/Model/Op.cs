using System.Globalization;

namespace Strata.Interop.Tests.Qcow2.Model;

public enum OpKind
{
    Write,
    /// <summary>qemu-io write -c: a compressed cluster (only on clusters this layer never touched).</summary>
    WriteCompressed,
    Zero,
    Discard,
    Read,
    Flush,
    /// <summary>Close the image and open it again (Strata), or start a new qemu-io process.</summary>
    Reopen,
}

/// <summary>Who applies an operation to the image.</summary>
public enum Applier
{
    Strata,
    Qemu,
}

/// <summary>
/// One guest operation. Written data is either a repeated <see cref="Pattern"/> byte, or (Pattern &lt; 0)
/// pseudo-random bytes from <see cref="DataSeed"/>, so an op list fully describes its effect.
/// </summary>
public sealed record Op(
    OpKind Kind,
    long Offset = 0,
    long Length = 0,
    int Pattern = -1,
    int DataSeed = 0,
    bool MayUnmap = false,
    bool Fua = false,
    Applier By = Applier.Strata)
{
    public bool IsWrite => Kind is OpKind.Write or OpKind.WriteCompressed;

    public bool HasRange => Kind is OpKind.Write or OpKind.WriteCompressed or OpKind.Zero or OpKind.Discard or OpKind.Read;

    public byte[] MakeData()
    {
        var d = new byte[Length];
        if (Pattern >= 0)
            Array.Fill(d, (byte)Pattern);
        else
            new Random(DataSeed).NextBytes(d);
        return d;
    }

    private string DataText => Pattern >= 0 ? $"pattern 0x{Pattern:x2}" : $"random(seed {DataSeed})";

    public override string ToString()
    {
        string by = By == Applier.Qemu ? "[qemu-io] " : "[strata]  ";
        string range = $"{Offset} +{Length} (0x{Offset:x} +0x{Length:x})";
        return by + Kind switch
        {
            OpKind.Write => $"write {range} {DataText}{(Fua ? " fua" : "")}",
            OpKind.WriteCompressed => $"write-compressed {range} {DataText}",
            OpKind.Zero => $"write-zeroes {range}{(MayUnmap ? " may-unmap" : "")}{(Fua ? " fua" : "")}",
            OpKind.Discard => $"discard {range}",
            OpKind.Read => $"read {range}",
            OpKind.Flush => "flush",
            OpKind.Reopen => "reopen",
            _ => Kind.ToString(),
        };
    }

    /// <summary>
    /// The qemu-io command for this op, or null (reads and reopens have none). Random data goes through a file
    /// written into <paramref name="dataDir"/> (qemu-io write -s).
    /// </summary>
    public string? QemuIoCommand(string dataDir, int index)
    {
        string range = $"{Offset.ToString(CultureInfo.InvariantCulture)} {Length.ToString(CultureInfo.InvariantCulture)}";
        switch (Kind)
        {
            case OpKind.Write:
            case OpKind.WriteCompressed:
            {
                string flags = (Kind == OpKind.WriteCompressed ? "-c " : "") + (Fua ? "-f " : "");
                if (Pattern >= 0)
                    return $"write -q {flags}-P 0x{Pattern:x2} {range}";
                string file = Path.Combine(dataDir, $"data-{index}.bin");
                File.WriteAllBytes(file, MakeData());
                return $"write -q {flags}-s {file} {range}";
            }
            case OpKind.Zero:
                return $"write -q -z {(MayUnmap ? "-u " : "")}{(Fua ? "-f " : "")}{range}";
            case OpKind.Discard:
                return $"discard -q {range}";
            case OpKind.Flush:
                return "flush";
            default:
                return null;
        }
    }
}
