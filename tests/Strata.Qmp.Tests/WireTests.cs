using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Strata.Qmp.Json;
using Xunit;

namespace Strata.Qmp.Tests;

/// <summary>
/// Every message captured from qemu-storage-daemon 7.2 is read into the typed records and
/// printed again: the bytes must be qsd's, byte for byte (member order, spacing, numbers).
/// </summary>
public class WireTests
{
    public static TheoryData<int> MessageIndexes
    {
        get
        {
            var data = new TheoryData<int>();
            for (var i = 0; i < QmpTestData.QsdMessages.Count; i++)
            {
                data.Add(i);
            }

            return data;
        }
    }

    [Theory]
    [MemberData(nameof(MessageIndexes))]
    public void Typed_round_trip_is_byte_exact(int index)
    {
        var line = QmpTestData.QsdMessages[index];
        using var doc = JsonDocument.Parse(line);
        var root = doc.RootElement;
        var printed = QmpMessage.Classify(root) switch
        {
            QmpMessageKind.Greeting => QmpWire.Greeting(root.Deserialize(QmpJsonContext.Default.QmpGreeting)!),
            QmpMessageKind.Error => ErrorBytes(root),
            QmpMessageKind.Event => EventBytes(root),
            QmpMessageKind.Return => ReturnBytes(root),
            var kind => throw new InvalidOperationException($"unexpected {kind}: {line}"),
        };

        Assert.Equal(line, Encoding.ASCII.GetString(printed));
    }

    private static byte[] ErrorBytes(JsonElement root)
    {
        var response = QmpResponse.Parse(root);
        Assert.True(response.IsError);
        return QmpWire.Error(response.Error, response.Id);
    }

    private static byte[] EventBytes(JsonElement root)
    {
        var e = QmpEvent.Parse(root);
        var ctx = QmpJsonContext.Default;
        return e.Name switch
        {
            QmpEventNames.JobStatusChange => Typed(e, ctx.JobStatusChangeEvent),
            QmpEventNames.BlockJobCompleted => Typed(e, ctx.BlockJobCompletedEvent),
            QmpEventNames.BlockJobCancelled => Typed(e, ctx.BlockJobCancelledEvent),
            QmpEventNames.BlockJobError => Typed(e, ctx.BlockJobErrorEvent),
            QmpEventNames.BlockJobReady => Typed(e, ctx.BlockJobReadyEvent),
            QmpEventNames.BlockJobPending => Typed(e, ctx.BlockJobPendingEvent),
            QmpEventNames.BlockExportDeleted => Typed(e, ctx.BlockExportDeletedEvent),
            _ => throw new InvalidOperationException($"no type for event {e.Name}"),
        };
    }

    private static byte[] Typed<T>(QmpEvent e, JsonTypeInfo<T> info) =>
        QmpWire.Event(e.Name, e.DataAs(info), info, e.Timestamp);

    private static byte[] ReturnBytes(JsonElement root)
    {
        var response = QmpResponse.Parse(root);
        var value = response.Return;
        var ctx = QmpJsonContext.Default;
        if (value.ValueKind == JsonValueKind.Object)
        {
            if (value.TryGetProperty("qemu", out _))
            {
                return R(value, ctx.VersionInfo, response.Id);
            }

            if (value.TryGetProperty("vm-clock-nsec", out _))
            {
                return R(value, ctx.SnapshotInfo, response.Id);
            }

            Assert.Empty(value.EnumerateObject());
            return R(value, ctx.QmpEmpty, response.Id);
        }

        var first = value.EnumerateArray().FirstOrDefault();
        if (first.ValueKind == JsonValueKind.Undefined)
        {
            return R(value, ctx.ListJobInfo, response.Id);
        }

        bool Has(string name) => first.TryGetProperty(name, out _);
        if (Has("iops_rd"))
        {
            return R(value, ctx.ListBlockDeviceInfo, response.Id);
        }

        if (Has("stats"))
        {
            return R(value, ctx.ListBlockStats, response.Id);
        }

        if (Has("current-progress"))
        {
            return R(value, ctx.ListJobInfo, response.Id);
        }

        if (Has("auto-finalize"))
        {
            return R(value, ctx.ListBlockJobInfo, response.Id);
        }

        if (Has("shutting-down"))
        {
            return R(value, ctx.ListBlockExportInfo, response.Id);
        }

        if (Has("meta-type"))
        {
            return R(value, ctx.ListSchemaInfo, response.Id);
        }

        return R(value, ctx.ListCommandInfo, response.Id);
    }

    private static byte[] R<T>(JsonElement value, JsonTypeInfo<T> info, JsonElement? id) =>
        QmpWire.Return(value.Deserialize(info)!, info, id);

    [Fact]
    public void The_data_covers_the_main_shapes()
    {
        var all = string.Join("\n", QmpTestData.QsdMessages);
        foreach (var needle in new[]
                 {
                     "\"QMP\"", "\"iops_rd\"", "\"timed_stats\"", "\"current-progress\"", "\"auto-finalize\"", "\"shutting-down\"",
                     "\"meta-type\"", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED", "BLOCK_JOB_ERROR", "BLOCK_JOB_READY",
                     "BLOCK_JOB_PENDING", "BLOCK_EXPORT_DELETED", "\"dirty-bitmaps\"", "\"backing_file\"", "\"vm-clock-nsec\"",
                     "CommandNotFound", "DeviceNotActive",
                 })
        {
            Assert.Contains(needle, all, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Greeting_return_error_event_shapes()
    {
        var greeting = new QmpGreeting { Qmp = new QmpGreetingBody { Version = QmpTestData.QsdVersion, Capabilities = ["oob"] } };
        Assert.Equal(
            "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": \"Debian 1:7.2+dfsg-7+deb12u18+b3\"}, \"capabilities\": [\"oob\"]}}",
            Ascii(QmpWire.Greeting(greeting)));
        Assert.Equal("{\"return\": {}}", Ascii(QmpWire.Return(QmpEmpty.Instance, QmpJsonContext.Default.QmpEmpty)));
        Assert.Equal("{\"return\": {}, \"id\": 1}", Ascii(QmpWire.Return(QmpEmpty.Instance, QmpJsonContext.Default.QmpEmpty, Json("1"))));
        Assert.Equal(
            "{\"id\": 31, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nope has not been found\"}}",
            Ascii(QmpWire.Error(QmpErrors.CommandNotFound("nope"), Json("31"))));
        Assert.Equal(
            "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting capabilities negotiation with 'qmp_capabilities'\"}}",
            Ascii(QmpWire.Error(QmpErrors.ExpectingCapabilities)));
        var ts = new QmpTimestamp { Seconds = 1795620357, Microseconds = 81823 };
        Assert.Equal(
            "{\"timestamp\": {\"seconds\": 1795620357, \"microseconds\": 81823}, \"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"status\": \"created\", \"id\": \"c1\"}}",
            Ascii(QmpWire.Event(QmpEventNames.JobStatusChange, new JobStatusChangeEvent { Id = "c1", Status = JobStatus.Created },
                QmpJsonContext.Default.JobStatusChangeEvent, ts)));
    }

    public static TheoryData<string, string> DispatchCases => new()
    {
        // request -> what qsd answered (after negotiation; OOB not enabled)
        { "[1,2]", "{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input must be a JSON object\"}}" },
        { "{\"foo\":1}", "{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'foo' is unexpected\"}}" },
        { "{\"execute\":\"query-version\",\"foo\":1}", "{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'foo' is unexpected\"}}" },
        { "{\"execute\":1}", "{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'execute' must be a string\"}}" },
        { "{\"execute\":\"query-version\",\"arguments\":[]}", "{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'arguments' must be an object\"}}" },
        { "{\"exec-oob\":\"query-version\"}", "{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'exec-oob' is unexpected\"}}" },
        { "{\"execute\":\"query-version\",\"exec-oob\":\"x\"}", "{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'exec-oob' is unexpected\"}}" },
        { "{\"id\":3}", "{\"id\": 3, \"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input lacks member 'execute'\"}}" },
        { "{\"arguments\":{},\"foo\":1,\"execute\":\"x\"}", "{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'foo' is unexpected\"}}" },
        { "{\"execute\":\"x\",\"arguments\":1,\"id\":\"i\"}", "{\"id\": \"i\", \"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'arguments' must be an object\"}}" },
    };

    [Theory]
    [MemberData(nameof(DispatchCases))]
    public void Request_checks_match_qsd(string request, string expected)
    {
        using var doc = JsonDocument.Parse(request);
        Assert.False(QmpRequest.TryParse(doc.RootElement, oobEnabled: false, out _, out var error, out var id));
        Assert.Equal(expected, Ascii(QmpWire.Error(error, id)));
    }

    [Fact]
    public void Request_parses()
    {
        using var doc = JsonDocument.Parse("{\"execute\":\"block_resize\",\"arguments\":{\"node-name\":\"x\",\"size\":1},\"id\":{\"a\":1}}");
        Assert.True(QmpRequest.TryParse(doc.RootElement, false, out var request, out _, out _));
        Assert.Equal("block_resize", request.Command);
        Assert.False(request.IsOob);
        Assert.Equal(1, request.Arguments.GetProperty("size").GetInt64());
        Assert.Equal("{\"a\": 1}", QemuJsonWriter.ToJson(request.Id!.Value));

        using var oob = JsonDocument.Parse("{\"exec-oob\":\"migrate-pause\",\"id\":1}");
        Assert.True(QmpRequest.TryParse(oob.RootElement, true, out var r2, out _, out _));
        Assert.True(r2.IsOob);
        Assert.Equal(JsonValueKind.Undefined, r2.Arguments.ValueKind);

        using var both = JsonDocument.Parse("{\"execute\":\"a\",\"exec-oob\":\"b\"}");
        Assert.False(QmpRequest.TryParse(both.RootElement, true, out _, out var clash, out _));
        Assert.Contains("clashes with", clash.Desc, StringComparison.Ordinal);
    }

    [Fact]
    public void Command_message()
    {
        var args = new BlockdevDelArgs { NodeName = "d0" };
        Assert.Equal("{\"execute\": \"blockdev-del\", \"arguments\": {\"node-name\": \"d0\"}, \"id\": 7}",
            Ascii(QmpWire.Command("blockdev-del", args, QmpJsonContext.Default.BlockdevDelArgs, Json("7"))));
        Assert.Equal("{\"execute\": \"query-version\"}", Ascii(QmpWire.Command("query-version", QmpEmpty.Instance, QmpJsonContext.Default.QmpEmpty)));
        Assert.Equal("{\"exec-oob\": \"x\", \"id\": 1}", Ascii(QmpWire.Command("x", default, Json("1"), oob: true)));
    }

    private static string Ascii(byte[] b) => Encoding.ASCII.GetString(b);

    private static JsonElement Json(string s)
    {
        using var d = JsonDocument.Parse(s);
        return d.RootElement.Clone();
    }
}
