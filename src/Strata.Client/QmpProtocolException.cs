namespace Strata.Client;

/// <summary>The server sent something that is not QMP as expected (no greeting, an unreadable reply).</summary>
public sealed class QmpProtocolException : IOException
{
    public QmpProtocolException()
        : base("QMP protocol error")
    {
    }

    public QmpProtocolException(string message)
        : base(message)
    {
    }

    public QmpProtocolException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
