using Microsoft.Extensions.Logging;

namespace Strata.Nbd.Tests.Infrastructure;

/// <summary>Keeps what the server logs at warning level and above, to assert that nothing unexpected failed.</summary>
public sealed class RecordingLogger : ILogger
{
    private readonly List<string> _entries = [];

    public IReadOnlyList<string> Problems
    {
        get
        {
            lock (_entries)
                return [.. _entries];
        }
    }

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Warning;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (!IsEnabled(logLevel))
            return;
        lock (_entries)
            _entries.Add($"{logLevel}: {formatter(state, exception)} {exception}");
    }
}
