using System.Text;
using System.Text.Json;
using Strata.Qmp.Framing;
using Strata.Qmp.Json;
using Xunit;

namespace Strata.Qmp.Tests;

/// <summary>
/// The input side of QMP, against what qemu-storage-daemon 7.2 answered to the same bytes
/// (each expected error is the "desc" qsd sent; "=VALUE" is a parsed value printed as QEMU prints it).
/// </summary>
public class StreamerTests
{
    private static List<string> Run(byte[] input, QmpLimits? limits = null, bool byteByByte = false)
    {
        var streamer = new QemuJsonStreamer(limits);
        if (byteByByte)
        {
            foreach (var b in input)
            {
                streamer.Feed([b]);
            }
        }
        else
        {
            streamer.Feed(input);
        }

        var result = new List<string>();
        while (streamer.TryDequeue(out var frame))
        {
            using (frame)
            {
                result.Add(frame.IsError ? frame.Error! : "=" + QemuJsonWriter.ToJson(frame.Root));
            }
        }

        return result;
    }

    private static byte[] B(string latin1) => Encoding.Latin1.GetBytes(latin1);

    public static TheoryData<string, string[]> Cases => new()
    {
        { "garbage\n", ["JSON parse error, invalid keyword 'garbage'"] },
        { "[1,2]\n", ["=[1, 2]"] },
        { "{\"a\" 1}\n", ["JSON parse error, missing : in object pair"] },
        { "[{\"a\" 1}]\n", ["JSON parse error, missing : in object pair"] },
        { "[1 2]\n", ["JSON parse error, expected separator in list"] },
        { "{\"a\":1,}\n", ["JSON parse error, expecting value"] },
        { "[1,]\n", ["JSON parse error, expecting value"] },
        { "}\n", ["JSON parse error, expecting value"] },
        { "]\n", ["JSON parse error, expecting value"] },
        { "[}\n]\n", ["JSON parse error, expecting value", "JSON parse error, expecting value"] },
        { "{]\n", ["JSON parse error, expecting value"] },
        { "{1:2}\n", ["JSON parse error, key is not a string in object"] },
        { "{\"a\":}\n", ["JSON parse error, expecting value"] },
        { "[,]\n", ["JSON parse error, expecting value"] },
        { "{,}\n", ["JSON parse error, expecting value"] },
        { "{\"a\":1 \"b\":2}\n", ["JSON parse error, expected separator in dict"] },
        { "{\"execute\":\"query-version\"]\n", ["JSON parse error, expected separator in dict"] },
        { "[\"a\",}\n", ["JSON parse error, expecting value"] },
        { "{\"execute\":\"query-version\", \"id\": 12abc}\n", ["JSON parse error, expected separator in dict"] },
        { "{\"execute\":\"query-version\",\"id\":TRUE}\n", ["JSON parse error, stray 'T'", "JSON parse error, expecting value"] },
        { "{\"execute\":\"query-version\",\"id\":tru}\n", ["JSON parse error, invalid keyword 'tru'"] },
        { "{\"execute\":\"query-version\",\"id\":1}}\n", ["={\"execute\": \"query-version\", \"id\": 1}", "JSON parse error, expecting value"] },
        { "{\"execute\":\"query-version\",\"execute\":\"quit\"}\n", ["JSON parse error, duplicate key"] },
        { "{\"id\":{\"a\":1,\"a\":2}}\n", ["JSON parse error, duplicate key"] },
        { "{\"id\":[1,{\"a\" 2}]}\n", ["JSON parse error, missing : in object pair"] },
        { "\u0001\n", ["JSON parse error, stray '\u0001'"] },
        { "abc{\"id\":9}\n", ["JSON parse error, invalid keyword 'abc'", "={\"id\": 9}"] },
        { "01\n", ["JSON parse error, stray '01'"] },
        { "-\n", ["JSON parse error, stray '-\n'"] },
        // The error token swallowed the newline: recovery skips "1." up to the next control character.
        { "1.\n1.\n{\"id\":1}\n", ["JSON parse error, stray '1.\n'", "={\"id\": 1}"] },
        { "\"a\u0001\"\n", ["JSON parse error, stray '\"a\u0001'"] },
        { "\u00ff\n", ["JSON parse error, stray '\uFFFD'"] },
        { "\"\u00fe\"\n", ["JSON parse error, stray '\"\uFFFD'"] },
        { "{\"id\":\"\u0080\"}\n", ["JSON parse error, invalid UTF-8 sequence in string"] },
        { "{\"id\":\"\u00ef\u00bf\u00bf\"}\n", ["JSON parse error, invalid UTF-8 sequence in string"] },
        { "{\"id\":\"\u00c0\u0081\"}\n", ["JSON parse error, invalid UTF-8 sequence in string"] },
        { "{\"id\":\"\u00e0\u0080\u0080\"}\n", ["JSON parse error, invalid UTF-8 sequence in string"] },
        { "{\"id\":\"\u00f0\u009f\u0098\u0080 \u00ed\u00a0\u0080\"}\n", ["JSON parse error, invalid UTF-8 sequence in string"] },
        { "{\"id\":\"\\x\"}\n", ["JSON parse error, invalid escape sequence in string"] },
        { "{\"id\":\"\\u12\"}\n", ["JSON parse error, \\u12\" is not a valid Unicode character"] },
        { "{\"id\":\"\\ud800\"}\n", ["JSON parse error, \\ud800 is not a valid Unicode character"] },
        { "{\"id\":\"\\uffff\"}\n", ["JSON parse error, \\uffff is not a valid Unicode character"] },
        { "{\"id\":\"\\ud83d\\u0041\"}\n", ["JSON parse error, \\ud83d is not a valid Unicode character"] },
        { "{\"id\":\"\\u0041\\u00\"}\n", ["JSON parse error, \\u00\" is not a valid Unicode character"] },
        { "{\"execute\":\"query-version\",\"id\":1} 5 \"x\" \n", ["={\"execute\": \"query-version\", \"id\": 1}", "=5", "=\"x\""] },
        { "{\"execute\":\n\"query-version\"\n}\n", ["={\"execute\": \"query-version\"}"] },
        { "{\"execute\":\"query-version\"}{\"execute\":\"query-version\",\"id\":2}\n", ["={\"execute\": \"query-version\"}", "={\"execute\": \"query-version\", \"id\": 2}"] },
        { "\t{\"id\":\"tab\"}\n", ["={\"id\": \"tab\"}"] },
        { "{'execute':'query-version','id':'x\\'y'}\n", ["={\"execute\": \"query-version\", \"id\": \"x'y\"}"] },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Matches_qsd(string latin1Input, string[] expected)
    {
        Assert.Equal(expected, Run(B(latin1Input)));
        Assert.Equal(expected, Run(B(latin1Input), byteByByte: true));
    }

    public static TheoryData<string, string> Echoes => new()
    {
        // id as sent -> id as qsd echoed it
        { "{\"a\":[1,2.5,\"x\"]}", "{\"a\": [1, 2.5, \"x\"]}" },
        { "0.1", "0.10000000000000001" },
        { "\"\\u00e9\\ud83d\\ude00\\n\\t/\"", "\"\\u00E9\\uD83D\\uDE00\\n\\t/\"" },
        { "\"\u00c3\u00a9\"", "\"\\u00E9\"" },
        { "1e400", "inf" },
        { "18446744073709551615", "18446744073709551615" },
        { "-9223372036854775809", "-9.2233720368547758e+18" },
        { "1.0", "1" },
        { "1e5", "100000" },
        { "[true,false,null,{}]", "[true, false, null, {}]" },
        { "\"\\u0000\"", "\"\\u0000\"" },
        { "\"\u00c0\u0080\"", "\"\\u0000\"" },
        { "\"\\u0041\\/\"", "\"A/\"" },
        { "\"\u007f\"", "\"\\u007F\"" },
        { "-0", "0" },
        { "-0.0", "-0" },
        { "1e20", "1e+20" },
        { "1.5e-7", "1.4999999999999999e-07" },
        { "123456789012345678901234", "1.2345678901234569e+23" },
        { "0.0001", "0.0001" },
        { "1E+2", "100" },
        { "{\"b\":1,\"a\":2,\"z\":3,\"id\":4}", "{\"a\": 2, \"b\": 1, \"z\": 3, \"id\": 4}" },
        { "{\"x\":[-1,2]}", "{\"x\": [-1, 2]}" },
        { "null", "null" },
    };

    [Theory]
    [MemberData(nameof(Echoes))]
    public void Echoed_id_is_printed_as_qsd_printed_it(string latin1Id, string expectedId)
    {
        var input = B("{\"execute\":\"query-version\",\"id\":" + latin1Id + "}\n");
        var streamer = new QemuJsonStreamer();
        streamer.Feed(input);
        Assert.True(streamer.TryDequeue(out var frame));
        using (frame)
        {
            Assert.False(frame.IsError, frame.Error);
            var id = frame.Root.GetProperty("id");
            var version = QmpTestData.QsdVersion;
            var bytes = QmpWire.Return(version, QmpJsonContext.Default.VersionInfo, id);
            var expected = "{\"return\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": \"Debian 1:7.2+dfsg-7+deb12u18+b3\"}, \"id\": "
                + expectedId + "}";
            Assert.Equal(expected, Encoding.ASCII.GetString(bytes));
        }
    }

    [Fact]
    public void Nesting_past_1024_is_refused_and_the_rest_is_read_as_qsd_does()
    {
        var deep = Run(B(new string('[', 1025) + new string(']', 1025) + "\n"));
        Assert.Equal("JSON nesting depth limit exceeded", deep[0]);
        Assert.Equal(1026, deep.Count);
        Assert.All(deep.Skip(1), e => Assert.Equal("JSON parse error, expecting value", e));

        var ok = Run(B(new string('[', 1024) + new string(']', 1024) + "\n"));
        Assert.Single(ok);
        Assert.StartsWith("=[[[", ok[0], StringComparison.Ordinal);
    }

    [Fact]
    public void Size_and_count_limits_answer_an_error_and_the_stream_goes_on()
    {
        var limits = new QmpLimits { MaxTokenSize = 64, MaxTokenCount = 8 };
        var big = Run(B("{\"id\":\"" + new string('a', 100) + "\"}\n{\"id\":1}\n"), limits);
        Assert.Equal("JSON token size limit exceeded", big[0]);
        Assert.Equal("={\"id\": 1}", big[^1]);

        var many = Run(B("[1,2,3,4,5,6,7,8]\n{\"id\":2}\n"), limits);
        Assert.Equal("JSON token count limit exceeded", many[0]);
        Assert.Equal("={\"id\": 2}", many[^1]);

        var total = Run(B("[\"" + new string('b', 40) + "\",\"" + new string('c', 40) + "\"]\n{\"id\":3}\n"), limits);
        Assert.Equal("JSON token size limit exceeded", total[0]);
        Assert.Equal("={\"id\": 3}", total[^1]);
    }

    [Fact]
    public void Qemu_default_limits()
    {
        Assert.Equal(64L << 20, QmpLimits.Qemu.MaxTokenSize);
        Assert.Equal(2 << 20, QmpLimits.Qemu.MaxTokenCount);
        Assert.Equal(1024, QmpLimits.Qemu.MaxNesting);
    }

    [Fact]
    public void Strings_keep_their_unicode()
    {
        var r = Run(B("{'a':\"\u00c3\u00a9\\ud83d\\ude00 \\\" ' \\u0000\"}\n"));
        Assert.Single(r);
        var streamer = new QemuJsonStreamer();
        streamer.Feed(B("{'a':\"\u00c3\u00a9\\ud83d\\ude00 \\\" ' \\u0000\"}\n"));
        Assert.True(streamer.TryDequeue(out var frame));
        using (frame)
        {
            Assert.Equal("é😀 \" ' \0", frame.Root.GetProperty("a").GetString());
        }
    }
}
