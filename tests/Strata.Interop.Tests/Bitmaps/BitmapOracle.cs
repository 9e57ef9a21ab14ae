using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Strata.Images.Format;
using Strata.Images.Qcow2;
using Xunit;

namespace Strata.Interop.Tests.Bitmaps;

/// <summary>How QEMU and Strata see the persistent bitmaps of an image: dirty ranges, directory, check result.</summary>
internal static partial class BitmapOracle
{
    /// <summary>The dirty ranges of a bitmap as QEMU serves them (qemu-nbd -B, NBD context qemu:dirty-bitmap:NAME).</summary>
    public static List<(long Offset, long Length)> QemuDirty(string path, string name)
    {
        QemuTools.RequireTools("qemu-nbd", "nbdinfo");
        var r = QemuTools.NbdInfo($"--map=qemu:dirty-bitmap:{name}", "--json", "--", "[", QemuTools.Resolve("qemu-nbd"), "-r", "-f", "qcow2", "-B", name, path, "]");
        Assert.True(r.ExitCode == 0, $"nbdinfo map of bitmap '{name}' in {path}: {r}");
        var list = new List<(long, long)>();
        foreach (var e in JsonNode.Parse(r.StdOut)!.AsArray())
            if ((int)e!["type"]! == 1)
                Add(list, (long)e["offset"]!, (long)e["length"]!);
        return list;
    }

    /// <summary>The dirty ranges of a bitmap as Strata loads it (read-only open).</summary>
    public static async Task<List<(long Offset, long Length)>> StrataDirty(string path, string name)
    {
        await using var img = (Qcow2Image)await ImageOpener.OpenAsync(path, new ImageOpenOptions { ReadOnly = true, Format = "qcow2" });
        var bm = img.DirtyBitmaps.Find(name) ?? throw new Xunit.Sdk.XunitException($"Strata does not see bitmap '{name}' in {path}");
        var list = new List<(long, long)>();
        foreach (var (off, len, dirty) in bm.Extents())
            if (dirty)
                Add(list, off, len);
        return list;
    }

    private static void Add(List<(long Offset, long Length)> list, long off, long len)
    {
        if (list.Count > 0 && list[^1].Offset + list[^1].Length == off)
            list[^1] = (list[^1].Offset, list[^1].Length + len);
        else
            list.Add((off, len));
    }

    /// <summary>qemu-img info's format-specific data (bitmaps list included) as JSON text.</summary>
    public static string FormatSpecific(string path)
    {
        var r = QemuTools.QemuImg("info", "--output=json", "-f", "qcow2", path).EnsureSuccess();
        return JsonNode.Parse(r.StdOut)!["format-specific"]!.ToJsonString();
    }

    /// <summary>The bitmap names qemu-img info lists.</summary>
    public static List<string> Names(string path)
    {
        var r = QemuTools.QemuImg("info", "--output=json", "-f", "qcow2", path).EnsureSuccess();
        var bitmaps = JsonNode.Parse(r.StdOut)!["format-specific"]?["data"]?["bitmaps"];
        return bitmaps == null ? [] : [.. bitmaps.AsArray().Select(b => (string)b!["name"]!)];
    }

    public static List<string> InUseNames(string path)
    {
        var r = QemuTools.QemuImg("info", "--output=json", "-f", "qcow2", "-U", path).EnsureSuccess();
        var bitmaps = JsonNode.Parse(r.StdOut)!["format-specific"]?["data"]?["bitmaps"];
        return bitmaps == null ? [] : [.. bitmaps.AsArray().Where(b => b!["flags"]!.AsArray().Any(f => (string)f! == "in-use")).Select(b => (string)b!["name"]!)];
    }

    public static void AssertCheckClean(string path)
    {
        var r = QemuTools.QemuImg("check", "-f", "qcow2", path);
        Assert.True(r.ExitCode == 0 && r.StdOut.Contains("No errors were found", StringComparison.Ordinal), $"qemu-img check {path}: {r}");
    }

    /// <summary>Output of the two programs made comparable: program name, auto node names, actual size.</summary>
    public static string Normalize(string s) =>
        NodeName().Replace(s.Replace("strata-img:", "qemu-img:", StringComparison.Ordinal).Replace("Try 'strata-img --help'", "Try 'qemu-img --help'", StringComparison.Ordinal), "#blockN");

    [GeneratedRegex("#block[0-9]+")]
    private static partial Regex NodeName();

    /// <summary>Every bitmap of both images has the same bits as QEMU sees them, and Strata reads the same.</summary>
    public static async Task AssertSameBitmapsAsync(string expectedPath, string actualPath)
    {
        Assert.Equal(FormatSpecific(expectedPath), FormatSpecific(actualPath));
        foreach (var name in Names(expectedPath))
        {
            if (InUseNames(expectedPath).Contains(name))
                continue;
            var q = QemuDirty(expectedPath, name);
            Assert.Equal(q, QemuDirty(actualPath, name));
            Assert.Equal(q, await StrataDirty(actualPath, name));
            Assert.Equal(q, await StrataDirty(expectedPath, name));
        }
    }
}
