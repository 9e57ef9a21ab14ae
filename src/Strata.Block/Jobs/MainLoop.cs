namespace Strata.Block.Jobs;

/// <summary>
/// The control plane's one-at-a-time section, as QEMU's main loop: monitor commands hold it while they run and
/// until their reply is queued, and jobs take it to complete (waiting, pending, concluded), so a job never
/// completes in the middle of a command nor between a command and its reply.
/// </summary>
public sealed class MainLoop : IDisposable
{
    private readonly SemaphoreSlim _gate = new(1, 1);

    /// <summary>Waits for the loop; dispose the result to leave it.</summary>
    public async ValueTask<Turn> EnterAsync(CancellationToken ct = default)
    {
        await _gate.WaitAsync(ct).ConfigureAwait(false);
        return new Turn(this);
    }

    /// <summary>A held turn of the loop.</summary>
    public readonly struct Turn(MainLoop loop) : IDisposable
    {
        public void Dispose() => loop?._gate.Release();
    }

    public void Dispose() => _gate.Dispose();
}
