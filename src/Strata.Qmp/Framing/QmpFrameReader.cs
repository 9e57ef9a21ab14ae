using System.IO.Pipelines;
using Strata.Qmp.Json;

namespace Strata.Qmp.Framing;

/// <summary>
/// Reads QMP messages from a pipe: a stream of JSON values, parsed as QEMU parses its QMP
/// input (<see cref="QemuJsonStreamer"/>). Partial reads are fine; a message may span lines
/// and several may share one. Malformed input yields error frames and reading goes on.
/// Not thread-safe: one reader at a time.
/// </summary>
public sealed class QmpFrameReader
{
    private readonly PipeReader _reader;
    private readonly QemuJsonStreamer _streamer;
    private bool _completed;

    public QmpFrameReader(PipeReader reader, QmpLimits? limits = null)
    {
        _reader = reader ?? throw new ArgumentNullException(nameof(reader));
        _streamer = new QemuJsonStreamer(limits);
    }

    /// <summary>
    /// The next message or error frame, or null at the end of the stream (a partial message
    /// left at the end is dropped, as QEMU does when a client disconnects).
    /// </summary>
    public async ValueTask<QmpFrame?> ReadAsync(CancellationToken cancellationToken = default)
    {
        while (true)
        {
            if (_streamer.TryDequeue(out var frame))
            {
                return frame;
            }

            if (_completed)
            {
                return null;
            }

            var result = await _reader.ReadAsync(cancellationToken).ConfigureAwait(false);
            var buffer = result.Buffer;
            foreach (var segment in buffer)
            {
                _streamer.Feed(segment.Span);
            }

            // The streamer keeps the state of a partial message itself: everything is consumed.
            _reader.AdvanceTo(buffer.End);
            if (result.IsCompleted || result.IsCanceled)
            {
                _completed = true;
            }
        }
    }
}
