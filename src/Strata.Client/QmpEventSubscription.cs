using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Strata.Qmp;

namespace Strata.Client;

/// <summary>
/// The events received from the moment of subscribing (<see cref="QmpClient.SubscribeEvents"/>)
/// until disposal, in order, buffered without bound. Subscribe before sending the command
/// whose events you want: QEMU may send them before the command's reply. Enumerate it, or
/// take events with <see cref="WaitAsync"/>. The enumeration ends when the connection does.
/// </summary>
public sealed class QmpEventSubscription : IAsyncEnumerable<QmpEvent>, IDisposable
{
    private readonly Channel<QmpEvent> _channel = Channel.CreateUnbounded<QmpEvent>(
        new UnboundedChannelOptions { SingleReader = false, SingleWriter = true });

    private readonly Action<QmpEventSubscription> _unsubscribe;
    private readonly Func<QmpEvent, bool>? _filter;
    private int _disposed;

    internal QmpEventSubscription(Func<QmpEvent, bool>? filter, Action<QmpEventSubscription> unsubscribe)
    {
        _filter = filter;
        _unsubscribe = unsubscribe;
    }

    internal void Post(QmpEvent e)
    {
        if (_filter is null || _filter(e))
        {
            _channel.Writer.TryWrite(e);
        }
    }

    internal void Complete(Exception? error) => _channel.Writer.TryComplete(error);

    /// <summary>The next event, waiting for it.</summary>
    public ValueTask<QmpEvent> ReadAsync(CancellationToken cancellationToken = default) =>
        _channel.Reader.ReadAsync(cancellationToken);

    /// <summary>
    /// Takes events until one matches <paramref name="predicate"/> and returns it (the events
    /// before it are consumed). Throws <see cref="TimeoutException"/> after <paramref name="timeout"/>,
    /// <see cref="QmpConnectionClosedException"/> if the connection ends first.
    /// </summary>
    public async Task<QmpEvent> WaitAsync(Func<QmpEvent, bool> predicate, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(predicate);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        cts.CancelAfter(timeout);
        try
        {
            while (true)
            {
                var e = await _channel.Reader.ReadAsync(cts.Token).ConfigureAwait(false);
                if (predicate(e))
                {
                    return e;
                }
            }
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new TimeoutException($"no matching QMP event within {timeout.TotalSeconds:0.###} s");
        }
        catch (ChannelClosedException ex)
        {
            throw new QmpConnectionClosedException("the QMP connection closed while waiting for an event", ex);
        }
    }

    /// <summary>Waits for the event named <paramref name="name"/> (matching <paramref name="predicate"/> if given).</summary>
    public Task<QmpEvent> WaitAsync(string name, TimeSpan timeout, Func<QmpEvent, bool>? predicate = null, CancellationToken cancellationToken = default) =>
        WaitAsync(e => e.Name == name && (predicate is null || predicate(e)), timeout, cancellationToken);

    /// <summary>Waits for JOB_STATUS_CHANGE of <paramref name="jobId"/> to <paramref name="status"/>.</summary>
    public Task<QmpEvent> WaitForJobStatusAsync(string jobId, JobStatus status, TimeSpan timeout, CancellationToken cancellationToken = default) =>
        WaitAsync(QmpEventNames.JobStatusChange, timeout, e =>
        {
            var data = e.DataAs(QmpJsonContext.Default.JobStatusChangeEvent);
            return data.Id == jobId && data.Status == status;
        }, cancellationToken);

    public async IAsyncEnumerator<QmpEvent> GetAsyncEnumerator(CancellationToken cancellationToken = default)
    {
        await foreach (var e in ReadAllAsync(cancellationToken).ConfigureAwait(false))
        {
            yield return e;
        }
    }

    private async IAsyncEnumerable<QmpEvent> ReadAllAsync([EnumeratorCancellation] CancellationToken cancellationToken)
    {
        while (await _channel.Reader.WaitToReadAsync(cancellationToken).ConfigureAwait(false))
        {
            while (_channel.Reader.TryRead(out var e))
            {
                yield return e;
            }
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            _unsubscribe(this);
            _channel.Writer.TryComplete();
        }
    }
}
