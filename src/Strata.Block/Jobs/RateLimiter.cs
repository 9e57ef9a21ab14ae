namespace Strata.Block.Jobs;

/// <summary>
/// QEMU's rate limit (include/qemu/ratelimit.h) for block jobs: work is counted in time slices; once a slice's
/// quota is used up, callers wait until the slice ends. Block jobs use 100 ms slices and a quota of
/// speed × slice (at least 1). Not thread-safe: one job owns one limiter.
/// </summary>
public sealed class RateLimiter
{
    /// <summary>The slice block jobs use (SLICE_TIME).</summary>
    public static readonly long DefaultSliceNs = 100_000_000;

    private readonly Func<long> _nowNs;
    private long _sliceStart;
    private long _sliceEnd;
    private long _sliceNs = DefaultSliceNs;
    private ulong _quota;
    private ulong _dispatched;

    /// <param name="nowNs">A monotonic clock in nanoseconds (tests pass their own).</param>
    public RateLimiter(Func<long>? nowNs = null)
    {
        _nowNs = nowNs ?? (() => (long)(System.Diagnostics.Stopwatch.GetTimestamp() * (1e9 / System.Diagnostics.Stopwatch.Frequency)));
    }

    /// <summary>Bytes per second; 0 = unlimited.</summary>
    public ulong Speed { get; private set; }

    /// <summary>ratelimit_set_speed.</summary>
    public void SetSpeed(ulong bytesPerSecond, long sliceNs = 100_000_000)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(sliceNs);
        Speed = bytesPerSecond;
        _sliceNs = sliceNs;
        _quota = bytesPerSecond == 0 ? 0 : (ulong)Math.Max(bytesPerSecond * (double)sliceNs / 1e9, 1);
    }

    /// <summary>
    /// ratelimit_calculate_delay: counts <paramref name="n"/> units of work in the current slice (a new slice starts
    /// when the last one is over) and returns 0 while the slice has quota left; once over quota, the slice is
    /// stretched to cover the excess and the answer is the nanoseconds until it ends.
    /// </summary>
    public long CalculateDelayNs(ulong n)
    {
        if (_quota == 0)
            return 0;
        long now = _nowNs();
        if (_sliceEnd < now)
        {
            _sliceStart = now;
            _sliceEnd = now + _sliceNs;
            _dispatched = 0;
        }

        _dispatched += n;
        if (_dispatched < _quota)
            return 0;
        double slices = (double)_dispatched / _quota;
        _sliceEnd = _sliceStart + (long)(slices * _sliceNs);
        return _sliceEnd - now;
    }

    /// <summary>The start of the current slice (for tests and statistics).</summary>
    public long SliceStartNs => _sliceStart;
}
