using Strata.Img.Cli;

namespace Strata.Img.Tests;

public sealed class UnitTests
{
    [Theory]
    [InlineData(0UL, "0 B")]
    [InlineData(999UL, "999 B")]
    [InlineData(1000UL, "0.977 KiB")]
    [InlineData(200704UL, "196 KiB")]
    [InlineData(1376256UL, "1.31 MiB")]
    [InlineData(1073741824UL, "1 GiB")]
    [InlineData(1023UL * 1024 * 1024, "0.999 GiB")]
    public void SizeToStr(ulong v, string expected) => Assert.Equal(expected, Sizes.SizeToStr(v));

    [Theory]
    [InlineData("1.5k", 1536UL)]
    [InlineData("0.1k", 102UL)]
    [InlineData("1.9999999999999999999k", 1024UL)]
    [InlineData("0x10", 16UL)]
    [InlineData("1b", 1UL)]
    [InlineData(" 1M", 1048576UL)]
    [InlineData("1.k", 1024UL)]
    [InlineData("4.2E", 4842270319348757312UL)] // 0.2 as a double, in 64.64 fixed point, as QEMU computes it
    public void Strtosz(string s, ulong expected)
    {
        Assert.Equal(Sizes.StrtoszError.None, Sizes.Strtosz(s, out ulong v, out _));
        Assert.Equal(expected, v);
    }

    [Theory]
    [InlineData("0.5")]
    [InlineData("1e3")]
    [InlineData("-1")]
    [InlineData(".5k")]
    [InlineData("1.5b")]
    [InlineData("1kB")]
    public void StrtoszInvalid(string s) => Assert.Equal(Sizes.StrtoszError.Invalid, Sizes.Strtosz(s, out _, out _));

    [Fact]
    public void QDictOrderIsQemus()
    {
        var d = new QDict().Put("filename", "a").Put("format", "qcow2").Put("dirty-flag", false).Put("actual-size", 1L)
            .Put("virtual-size", 2L).Put("cluster-size", 3L).Put("format-specific", new QDict());
        Assert.Equal(["virtual-size", "filename", "cluster-size", "format", "actual-size", "format-specific", "dirty-flag"],
            d.Entries.Select(e => e.Key).ToArray());
    }

    [Fact]
    public void PrettyJson()
    {
        var d = new QDict().Put("a", 1L).Put("l", new QList()).Put("s", "x\"é");
        string json = QJson.ToPrettyJson(d);
        Assert.Contains("\n    \"a\": 1", json);
        Assert.Contains("\n    \"s\": \"x\\\"\\u00E9\"", json);
        Assert.Contains("\n    \"l\": [\n    ]", json);
        Assert.StartsWith("{\n", json);
        Assert.EndsWith("\n}", json);
    }

    [Theory]
    [InlineData("a=b,,c,d=e,nof", "a=b,c|d=e|f=off")]
    [InlineData("help", "help=on")]
    public void OptionSplit(string input, string expected) =>
        Assert.Equal(expected, string.Join('|', QemuOpts.Split(input).Select(o => $"{o.Name}={o.Value}")));
}
