using System.Text.Json;
using Strata.Qmp.Json;
using Xunit;

namespace Strata.Qmp.Tests;

public class FormatTests
{
    [Theory]
    [InlineData("major,minor,micro", "micro,minor,major")]
    [InlineData("return,id", "return,id")]
    [InlineData("error,id", "id,error")]
    [InlineData("class,desc", "class,desc")]
    [InlineData("event,timestamp,data", "timestamp,event,data")]
    [InlineData("id,status", "status,id")]
    [InlineData("b,a,z,id", "a,b,z,id")]
    [InlineData("backing_file,write_threshold", "write_threshold,backing_file")]
    public void QDict_order(string inserted, string printed) =>
        Assert.Equal(printed.Split(','), QDictOrder.Sort(inserted.Split(',')));

    [Theory]
    [InlineData(0.1, "0.10000000000000001")]
    [InlineData(2.5, "2.5")]
    [InlineData(1.0, "1")]
    [InlineData(100000.0, "100000")]
    [InlineData(1e20, "1e+20")]
    [InlineData(1e16, "10000000000000000")]
    [InlineData(1e17, "1.0000000000000000e+17")]
    [InlineData(1.5e-7, "1.4999999999999999e-07")]
    [InlineData(0.0001, "0.0001")]
    [InlineData(0.00001, "1.0000000000000001e-05")]
    [InlineData(-0.0, "-0")]
    [InlineData(double.PositiveInfinity, "inf")]
    [InlineData(1e300, "1.0000000000000001e+300")]
    [InlineData(123.456, "123.456")]
    public void Percent_17g(double value, string expected)
    {
        // C: printf("%.17g") — trailing zeros removed
        var expectedTrimmed = expected.Contains('e', StringComparison.Ordinal)
            ? TrimMantissa(expected)
            : expected;
        Assert.Equal(expectedTrimmed, CNumberFormat.FormatG17(value));
    }

    private static string TrimMantissa(string s)
    {
        var e = s.IndexOf('e', StringComparison.Ordinal);
        var m = s[..e];
        if (m.Contains('.', StringComparison.Ordinal))
        {
            m = m.TrimEnd('0').TrimEnd('.');
        }

        return m + s[e..];
    }

    [Fact]
    public void Strings_are_escaped_as_qemu_does()
    {
        using var d = JsonDocument.Parse("\"a\\\"\\\\/\\b\\f\\n\\r\\t\\u0001\\u007f\\u00e9\\ud83d\\ude00\\uffff\"");
        Assert.Equal("\"a\\\"\\\\/\\b\\f\\n\\r\\t\\u0001\\u007F\\u00E9\\uD83D\\uDE00\\uFFFD\"", QemuJsonWriter.ToJson(d.RootElement));
    }

    [Fact]
    public void Modified_utf8()
    {
        Assert.Equal(0, ModifiedUtf8.DecodeCodepoint([0xC0, 0x80], out var n));
        Assert.Equal(2, n);
        Assert.Equal(-1, ModifiedUtf8.DecodeCodepoint([0xC0, 0x81], out _));
        Assert.Equal(-1, ModifiedUtf8.DecodeCodepoint([0xEF, 0xBF, 0xBF], out _));
        Assert.Equal(0x1F600, ModifiedUtf8.DecodeCodepoint([0xF0, 0x9F, 0x98, 0x80], out n));
        Assert.Equal(4, n);
        Assert.Equal("a\uFFFDb", ModifiedUtf8.DecodeLossy([(byte)'a', 0xFF, (byte)'b', 0, (byte)'c']));
    }
}
