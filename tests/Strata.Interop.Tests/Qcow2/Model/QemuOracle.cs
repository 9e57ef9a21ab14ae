using System.Buffers.Binary;
using System.Text.Json;
using Strata.Interop.Tests.Oracle;

namespace Strata.Interop.Tests.Qcow2.Model;

/// <summary>What `qemu-img check --output=json` said.</summary>
public sealed record CheckReport(int ExitCode, long Corruptions, long Leaks, long CheckErrors, long CorruptionsFixed, long LeaksFixed, string Output)
{
    public bool Clean => ExitCode == 0 && Corruptions == 0 && Leaks == 0 && CheckErrors == 0;

    public bool NoCorruption => ExitCode is 0 or 3 && Corruptions == 0 && CheckErrors == 0;

    public override string ToString() =>
        $"qemu-img check: exit {ExitCode}, {Corruptions} corruptions, {Leaks} leaks, {CheckErrors} check errors" +
        (CorruptionsFixed + LeaksFixed > 0 ? $" ({CorruptionsFixed} corruptions and {LeaksFixed} leaks fixed)" : "") +
        Environment.NewLine + Output;
}

/// <summary>The QEMU side of the differential tests.</summary>
public static class QemuOracle
{
    public static CheckReport Check(string image, string? repair = null)
    {
        var args = new List<string> { "check", "--output=json" };
        if (repair != null)
            args.AddRange(["-r", repair]);
        args.Add(image);
        var res = QemuTools.QemuImg([.. args]);
        long Get(JsonElement root, string name) => root.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetInt64() : 0;
        string output = (res.StdOut + res.StdErr).Trim();
        try
        {
            int start = res.StdOut.IndexOf('{', StringComparison.Ordinal);
            if (start < 0)
                return new CheckReport(res.ExitCode, 0, 0, 1, 0, 0, output);
            using var doc = JsonDocument.Parse(res.StdOut[start..]);
            var root = doc.RootElement;
            return new CheckReport(res.ExitCode, Get(root, "corruptions"), Get(root, "leaks"), Get(root, "check-errors"),
                Get(root, "corruptions-fixed"), Get(root, "leaks-fixed"), output);
        }
        catch (JsonException)
        {
            return new CheckReport(res.ExitCode, 0, 0, 1, 0, 0, output);
        }
    }

    /// <summary>The guest view as QEMU reads it (qemu-img convert -O raw of the whole chain).</summary>
    public static byte[] ReadAll(string image, string scratchDir)
    {
        string raw = Path.Combine(scratchDir, $"convert-{Guid.NewGuid():N}.raw");
        try
        {
            QemuTools.QemuImg("convert", "-O", "raw", image, raw).EnsureSuccess();
            return File.ReadAllBytes(raw);
        }
        finally
        {
            File.Delete(raw);
        }
    }

    /// <summary>Creates an image with qemu-img (qcow2 with the config's options, or raw).</summary>
    public static void Create(string path, ImageConfig c, string? backing = null, string? backingFormat = null)
    {
        var args = new List<string> { "create", "-q", "-f", c.Format };
        if (c.IsQcow2)
            args.AddRange(["-o", c.QemuOptions]);
        if (backing != null)
            args.AddRange(["-b", backing, "-F", backingFormat!]);
        args.AddRange([path, c.Size.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        QemuTools.QemuImg([.. args]).EnsureSuccess();
    }

    /// <summary>The qcow2 v3 dirty bit (incompatible feature bit 0) as it is on disk.</summary>
    public static bool IsDirty(string qcow2)
    {
        var b = new byte[80];
        using (var f = File.OpenRead(qcow2))
            f.ReadExactly(b);
        return BinaryPrimitives.ReadUInt32BigEndian(b.AsSpan(4)) >= 3 && (BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan(72)) & 1) != 0;
    }

    /// <summary>The corrupt bit (incompatible feature bit 1).</summary>
    public static bool IsMarkedCorrupt(string qcow2)
    {
        var b = new byte[80];
        using (var f = File.OpenRead(qcow2))
            f.ReadExactly(b);
        return BinaryPrimitives.ReadUInt32BigEndian(b.AsSpan(4)) >= 3 && (BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan(72)) & 2) != 0;
    }
}
