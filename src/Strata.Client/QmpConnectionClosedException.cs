namespace Strata.Client;

/// <summary>The QMP connection ended (the server closed it, or the client was disposed) before a reply came.</summary>
public sealed class QmpConnectionClosedException : IOException
{
    public QmpConnectionClosedException()
        : base("the QMP connection is closed")
    {
    }

    public QmpConnectionClosedException(string message)
        : base(message)
    {
    }

    public QmpConnectionClosedException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
