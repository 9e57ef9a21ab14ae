using System.Buffers;
using System.IO.Pipelines;
using System.Text.Json;
using Strata.Qmp.Json;

namespace Strata.Qmp.Framing;

/// <summary>
/// Writes QMP messages to a pipe, one per line, printed as QEMU prints JSON
/// (<see cref="QemuJsonWriter"/>). QEMU's monitor ends its lines with CR LF
/// (<see cref="ServerNewLine"/>); clients usually send LF. Safe for concurrent callers:
/// messages are never interleaved.
/// </summary>
public sealed class QmpFrameWriter : IDisposable
{
    /// <summary>What QEMU's monitor puts after each message.</summary>
    public static ReadOnlyMemory<byte> ServerNewLine { get; } = "\r\n"u8.ToArray();

    /// <summary>What a client puts after each message.</summary>
    public static ReadOnlyMemory<byte> ClientNewLine { get; } = "\n"u8.ToArray();

    private readonly PipeWriter _writer;
    private readonly ReadOnlyMemory<byte> _newLine;
    private readonly SemaphoreSlim _lock = new(1, 1);

    public QmpFrameWriter(PipeWriter writer, ReadOnlyMemory<byte> newLine)
    {
        _writer = writer ?? throw new ArgumentNullException(nameof(writer));
        _newLine = newLine;
    }

    /// <summary>Writes one message (any JSON value) in QEMU's format and flushes.</summary>
    public ValueTask WriteAsync(JsonElement message, CancellationToken cancellationToken = default) =>
        WriteRawAsync(QemuJsonWriter.ToUtf8Bytes(message), cancellationToken);

    /// <summary>Writes the bytes of one message (without its line end) and flushes.</summary>
    public async ValueTask WriteRawAsync(ReadOnlyMemory<byte> message, CancellationToken cancellationToken = default)
    {
        await _lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            _writer.Write(message.Span);
            _writer.Write(_newLine.Span);
            var result = await _writer.FlushAsync(cancellationToken).ConfigureAwait(false);
            if (result.IsCompleted)
            {
                throw new IOException("the QMP connection was closed by the peer");
            }
        }
        finally
        {
            _lock.Release();
        }
    }

    public void Dispose() => _lock.Dispose();
}
