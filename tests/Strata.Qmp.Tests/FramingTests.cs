using System.Buffers;
using System.IO.Pipelines;
using System.Text;
using Strata.Qmp.Framing;
using Xunit;

namespace Strata.Qmp.Tests;

public class FramingTests
{
    [Fact]
    public async Task Reader_handles_partial_reads_and_several_messages_per_read()
    {
        var pipe = new Pipe();
        var reader = new QmpFrameReader(pipe.Reader);
        var input = Encoding.ASCII.GetBytes("{\"execute\":\"a\",\"id\":1}{\"execute\":\n\"b\"}\ngarbage\n{\"execute\":\"c\"}");
        var writing = Task.Run(async () =>
        {
            for (var i = 0; i < input.Length; i += 5)
            {
                await pipe.Writer.WriteAsync(input.AsMemory(i, Math.Min(5, input.Length - i)));
                await Task.Yield();
            }

            await pipe.Writer.CompleteAsync();
        });

        var frames = new List<string>();
        while (await reader.ReadAsync() is { } frame)
        {
            using (frame)
            {
                frames.Add(frame.IsError ? "!" + frame.Error : frame.Root.GetProperty("execute").GetString()!);
            }
        }

        await writing;
        Assert.Equal(["a", "b", "!JSON parse error, invalid keyword 'garbage'", "c"], frames);
    }

    [Fact]
    public async Task Writer_puts_one_message_per_line()
    {
        var pipe = new Pipe();
        using var writer = new QmpFrameWriter(pipe.Writer, QmpFrameWriter.ServerNewLine);
        await writer.WriteRawAsync(QmpWire.Return(QmpEmpty.Instance, QmpJsonContext.Default.QmpEmpty));
        await writer.WriteRawAsync(QmpWire.Error(QmpErrors.LacksExecute));
        await pipe.Writer.CompleteAsync();
        var result = await pipe.Reader.ReadAsync();
        var text = Encoding.ASCII.GetString(result.Buffer.ToArray());
        Assert.Equal("{\"return\": {}}\r\n{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input lacks member 'execute'\"}}\r\n", text);
    }
}
