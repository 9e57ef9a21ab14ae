using System.IO.Pipelines;
using System.Net.Sockets;
using System.Text.Json;
using Strata.Qmp;
using Strata.Qmp.Framing;
using Xunit;

namespace Strata.Client.Tests;

/// <summary>
/// The client against a scripted server built from Strata.Qmp's server side (frame reader,
/// request checks, QmpWire): replies out of order, replies without id, events in between.
/// </summary>
public class FakeServerTests
{
    [Fact]
    public async Task Out_of_order_replies_and_events_are_routed()
    {
        var dir = Path.Combine("/var/tmp/strata-tests", "fake-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(dir);
        var path = Path.Combine(dir, "qmp.sock");
        try
        {
            using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            listener.Bind(new UnixDomainSocketEndPoint(path));
            listener.Listen(1);
            var server = Task.Run(async () =>
            {
                using var conn = await listener.AcceptAsync();
                await using var stream = new NetworkStream(conn, ownsSocket: false);
                var reader = new QmpFrameReader(PipeReader.Create(stream));
                using var writer = new QmpFrameWriter(PipeWriter.Create(stream), QmpFrameWriter.ServerNewLine);
                var version = new VersionInfo { Qemu = new VersionTriple { Major = 7, Minor = 2, Micro = 0 }, Package = "fake" };
                await writer.WriteRawAsync(QmpWire.Greeting(new QmpGreeting { Qmp = new QmpGreetingBody { Version = version, Capabilities = ["oob"] } }));

                async Task<QmpRequest> Next()
                {
                    using var frame = await reader.ReadAsync() ?? throw new EndOfStreamException();
                    Assert.True(QmpRequest.TryParse(frame.Root, false, out var request, out var error, out _), error?.Desc);
                    // keep the id beyond the frame
                    return QmpRequest.TryParse(JsonDocument.Parse(frame.Root.GetRawText()).RootElement, false, out var copy, out _, out _)
                        ? copy : request;
                }

                var caps = await Next();
                Assert.Equal("qmp_capabilities", caps.Command);
                await writer.WriteRawAsync(QmpWire.Return(QmpEmpty.Instance, QmpJsonContext.Default.QmpEmpty, caps.Id));

                var first = await Next();
                var second = await Next();
                var third = await Next();
                // an event, then the replies in reverse order, the last one without id
                await writer.WriteRawAsync(QmpWire.Event(QmpEventNames.BlockExportDeleted, new BlockExportDeletedEvent { Id = "e9" },
                    QmpJsonContext.Default.BlockExportDeletedEvent, QmpTimestamp.Now()));
                await writer.WriteRawAsync(QmpWire.Return(version, QmpJsonContext.Default.VersionInfo, third.Id));
                await writer.WriteRawAsync(QmpWire.Error(QmpErrors.CommandNotFound(second.Command), second.Id));
                await writer.WriteRawAsync(QmpWire.Error(QmpError.Generic("JSON parse error, expecting value")));
                Assert.Equal("query-version", first.Command);
                conn.Shutdown(SocketShutdown.Both);
            });

            await using var qmp = await QmpClient.ConnectUnixAsync(path);
            Assert.Equal("fake", qmp.Version.Package);
            using var events = qmp.SubscribeEvents();
            var a = qmp.QueryVersionAsync();
            await Task.Delay(20);
            var b = qmp.ExecuteAsync("bogus");
            await Task.Delay(20);
            var c = qmp.QueryVersionAsync();

            Assert.Equal("fake", (await c).Package);
            var eb = await Assert.ThrowsAsync<QmpException>(() => b);
            Assert.Equal(QmpErrorClass.CommandNotFound, eb.ErrorClass);
            var ea = await Assert.ThrowsAsync<QmpException>(() => a);
            Assert.Equal("JSON parse error, expecting value", ea.Description);
            var e = await events.WaitAsync(QmpEventNames.BlockExportDeleted, TimeSpan.FromSeconds(10));
            Assert.Equal("e9", e.DataAs(QmpJsonContext.Default.BlockExportDeletedEvent).Id);

            await server;
            await qmp.Completion.WaitAsync(TimeSpan.FromSeconds(10));
            await Assert.ThrowsAsync<QmpConnectionClosedException>(() => qmp.QueryVersionAsync());
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
