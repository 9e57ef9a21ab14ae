using System.Text.Json;

namespace Strata.Qmp.Framing;

/// <summary>
/// One message read off a QMP stream: either a parsed JSON value (any JSON value: it is the
/// dispatcher's job to reject non-objects, as QEMU does) or QEMU's parse error for input
/// that was not JSON. Dispose it to return the document's buffers.
/// </summary>
public sealed class QmpFrame : IDisposable
{
    private QmpFrame(JsonDocument? document, string? error)
    {
        Document = document;
        Error = error;
    }

    /// <summary>The parsed message, or null when <see cref="Error"/> is set.</summary>
    public JsonDocument? Document { get; }

    /// <summary>
    /// QEMU's description of why the input was rejected, e.g. "JSON parse error, invalid keyword 'garbage'"
    /// or "JSON nesting depth limit exceeded"; QEMU answers it as a GenericError without id.
    /// </summary>
    public string? Error { get; }

    /// <summary>True when the input was not a valid JSON value.</summary>
    public bool IsError => Error is not null;

    /// <summary>The root value; throws for an error frame.</summary>
    public JsonElement Root => Document?.RootElement
        ?? throw new InvalidOperationException($"QMP input was rejected: {Error}");

    /// <summary>A frame holding a parsed message.</summary>
    public static QmpFrame FromDocument(JsonDocument document) =>
        new(document ?? throw new ArgumentNullException(nameof(document)), null);

    /// <summary>A frame holding a parse error.</summary>
    public static QmpFrame FromError(string error) =>
        new(null, error ?? throw new ArgumentNullException(nameof(error)));

    public void Dispose() => Document?.Dispose();

    public override string ToString() => IsError ? $"error: {Error}" : Root.GetRawText();
}
