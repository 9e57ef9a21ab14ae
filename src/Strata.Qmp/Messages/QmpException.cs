using System.Text.Json;

namespace Strata.Qmp;

/// <summary>An error reply to a QMP command: QEMU's class and description.</summary>
public class QmpException : Exception
{
    public QmpException()
        : this(QmpError.Generic("QMP error"))
    {
    }

    public QmpException(string message)
        : this(QmpError.Generic(message))
    {
    }

    public QmpException(string message, Exception innerException)
        : base(message, innerException)
    {
        Error = QmpError.Generic(message);
    }

    public QmpException(QmpError error, string? command = null, JsonElement? id = null)
        : base(error?.Desc ?? throw new ArgumentNullException(nameof(error)))
    {
        Error = error;
        Command = command;
        Id = id;
    }

    /// <summary>The error as received.</summary>
    public QmpError Error { get; }

    /// <summary>The error class (GenericError, CommandNotFound, ...).</summary>
    public QmpErrorClass ErrorClass => Error.Class;

    /// <summary>QEMU's description, e.g. "Duplicate nodes with node-name='d0'".</summary>
    public string Description => Error.Desc;

    /// <summary>The command that failed, when known.</summary>
    public string? Command { get; }

    /// <summary>The id of the failed request, when it had one.</summary>
    public JsonElement? Id { get; }

    public override string ToString() =>
        $"{GetType().FullName}: {(Command is null ? "" : Command + ": ")}{Error}{Environment.NewLine}{StackTrace}";
}
