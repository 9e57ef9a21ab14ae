using System.Text;
using Microsoft.Extensions.Logging;

namespace Strata.Daemon.Logging;

/// <summary>
/// One line per message on stderr: <c>HH:mm:ss level: category[event] message</c>, with the exception's text on the
/// following lines. Used instead of Microsoft.Extensions.Logging.Console because that provider's options and
/// dependency-injection set-up cost 5-7 ms of the daemon's start-up (more than the rest of it together); the daemon
/// logs rarely (graph changes, connections, errors), so a synchronous write under a lock is enough.
/// </summary>
internal sealed class ConsoleLineLoggerProvider(LogLevel minimum, TextWriter? writer = null) : ILoggerProvider
{
    private readonly LogLevel _minimum = minimum;
    private readonly TextWriter _writer = writer ?? Console.Error;
    private readonly Lock _lock = new();

    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

    public void Dispose() => _writer.Flush();

    private static string LevelName(LogLevel level) => level switch
    {
        LogLevel.Trace => "trce",
        LogLevel.Debug => "dbug",
        LogLevel.Information => "info",
        LogLevel.Warning => "warn",
        LogLevel.Error => "fail",
        LogLevel.Critical => "crit",
        _ => "none",
    };

    private void Write(LogLevel level, string category, EventId id, string message, Exception? exception)
    {
        var sb = new StringBuilder(64 + message.Length);
        sb.Append(DateTime.Now.ToString("HH:mm:ss ", System.Globalization.CultureInfo.InvariantCulture))
          .Append(LevelName(level)).Append(": ").Append(category).Append('[').Append(id.Id).Append("] ")
          .Append(message.ReplaceLineEndings(" "));
        if (exception != null)
            sb.AppendLine().Append(exception);
        sb.AppendLine();
        lock (_lock)
        {
            _writer.Write(sb.ToString());
            _writer.Flush();
        }
    }

    private sealed class Logger(ConsoleLineLoggerProvider provider, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel != LogLevel.None && logLevel >= provider._minimum;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (IsEnabled(logLevel))
                provider.Write(logLevel, category, eventId, formatter(state, exception), exception);
        }
    }
}
