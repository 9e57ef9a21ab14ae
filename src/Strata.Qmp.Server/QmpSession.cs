using System.IO.Pipelines;
using System.Text.Json;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Strata.Block;
using Strata.Images;
using Strata.Qmp.Framing;

namespace Strata.Qmp.Server;

/// <summary>
/// One monitor connection: greeting, capabilities negotiation, then commands answered in order. Replies and events
/// leave through one queue, so an event raised while a command runs is sent before that command's reply (as qsd does).
/// </summary>
public sealed class QmpSession
{
    private readonly QmpServer _server;
    private readonly Stream _stream;
    private readonly Channel<Outgoing> _out = Channel.CreateUnbounded<Outgoing>(new UnboundedChannelOptions { SingleReader = true });
    private readonly ILogger _log;

    private readonly record struct Outgoing(byte[] Bytes, TaskCompletionSource? Written);

    internal QmpSession(QmpServer server, int id, Stream stream, string peer)
    {
        _server = server;
        _stream = stream;
        Id = id;
        Peer = peer;
        _log = server.Log;
    }

    public int Id { get; }

    public string Peer { get; }

    /// <summary>Capabilities negotiation is complete (commands run, events are sent).</summary>
    public bool Negotiated { get; internal set; }

    /// <summary>The client enabled out-of-band execution.</summary>
    public bool OobEnabled { get; internal set; }

    /// <summary>Set by quit: the host is asked to stop once the reply is out.</summary>
    internal bool QuitRequested { get; set; }

    internal void SendEvent(byte[] bytes)
    {
        if (Negotiated)
        {
            _out.Writer.TryWrite(new Outgoing(bytes, null));
        }
    }

    internal async Task RunAsync(CancellationToken ct)
    {
        var reader = PipeReader.Create(_stream);
        var writer = PipeWriter.Create(_stream);
        using var frames = new QmpFrameWriter(writer, QmpFrameWriter.ServerNewLine);
        var writing = WriteLoopAsync(frames, ct);
        _log.LogDebug("QMP session {Id} opened ({Peer})", Id, Peer);
        try
        {
            var o = _server.Options.Version;
            _out.Writer.TryWrite(new Outgoing(QmpWire.Greeting(new QmpGreeting
            {
                Qmp = new QmpGreetingBody { Version = o, Capabilities = [QmpCapabilities.Oob] },
            }), null));

            var input = new QmpFrameReader(reader);
            while (!ct.IsCancellationRequested && !writing.IsCompleted)
            {
                using var frame = await input.ReadAsync(ct).ConfigureAwait(false);
                if (frame is null)
                {
                    break;
                }

                byte[] reply;
                using (await _server.Daemon.MainLoop.EnterAsync(ct).ConfigureAwait(false))
                {
                    reply = await HandleAsync(frame, ct).ConfigureAwait(false);
                    if (!QuitRequested)
                    {
                        // Queued before the main loop is released: a job completing now sends its events after it.
                        _out.Writer.TryWrite(new Outgoing(reply, null));
                        continue;
                    }
                }

                // quit: the reply must be out before the host is told to stop.
                var written = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                _out.Writer.TryWrite(new Outgoing(reply, written));
                await written.Task.WaitAsync(TimeSpan.FromSeconds(5), ct).ConfigureAwait(false);
                _server.Options.Quit?.Invoke();
                QuitRequested = false;
            }
        }
        catch (Exception e) when (e is OperationCanceledException or IOException or TimeoutException)
        {
        }
        finally
        {
            _out.Writer.TryComplete();
            try
            {
                await writing.ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or IOException or ObjectDisposedException)
            {
            }

            await reader.CompleteAsync().ConfigureAwait(false);
            await writer.CompleteAsync().ConfigureAwait(false);
            _log.LogDebug("QMP session {Id} closed", Id);
        }
    }

    private async Task WriteLoopAsync(QmpFrameWriter frames, CancellationToken ct)
    {
        await foreach (var item in _out.Reader.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
        {
            try
            {
                await frames.WriteRawAsync(item.Bytes, ct).ConfigureAwait(false);
                item.Written?.TrySetResult();
            }
            catch (Exception e)
            {
                item.Written?.TrySetException(e);
                throw;
            }
        }
    }

    /// <summary>Answers one frame: the reply's bytes (without the line end).</summary>
    private async ValueTask<byte[]> HandleAsync(QmpFrame frame, CancellationToken ct)
    {
        if (frame.IsError)
        {
            return QmpWire.Error(QmpError.Generic(frame.Error!));
        }

        if (!QmpRequest.TryParse(frame.Root, OobEnabled, out var request, out var parseError, out var parseId))
        {
            return QmpWire.Error(parseError, parseId);
        }

        var id = request.Id;
        var command = _server.Commands.Find(request.Command);
        if (!Negotiated && command is not null && command.Name != "qmp_capabilities")
        {
            command = null;
        }

        if (command is null)
        {
            _log.LogInformation("QMP: unknown command {Command}", request.Command);
            return QmpWire.Error(Negotiated ? QmpErrors.CommandNotFound(request.Command) : QmpErrors.ExpectingCapabilities, id);
        }

        if (request.IsOob && !command.AllowOob)
        {
            return QmpWire.Error(QmpErrors.NoOob(request.Command), id);
        }

        _log.LogDebug("QMP {Session}: {Command} {Arguments}", Id, command.Name,
            request.Arguments.ValueKind == JsonValueKind.Undefined ? "" : request.Arguments.GetRawText());
        try
        {
            var value = await _server.ExecuteAsync(command, new QmpCommandContext(_server, this), request.Arguments, ct).ConfigureAwait(false);
            return QmpWire.Return(value, id);
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            throw;
        }
        catch (Exception e)
        {
            var error = ToQmpError(e);
            if (e is QmpException or BlockException or ImageException)
            {
                _log.LogInformation("QMP {Command}: {Error}", command.Name, error.Desc);
            }
            else
            {
                _log.LogError(e, "QMP {Command} failed", command.Name);
            }

            return QmpWire.Error(error, id);
        }
    }

    /// <summary>Block-layer errors are GenericError with their message (qsd 7.2 uses no other class for the commands Strata has).</summary>
    internal static QmpError ToQmpError(Exception e) => e switch
    {
        QmpException q => q.Error,
        BlockException b => QmpError.Generic(b.Message),
        ImageException i => QmpError.Generic(i.Message),
        _ => QmpError.Generic(e.Message),
    };
}
