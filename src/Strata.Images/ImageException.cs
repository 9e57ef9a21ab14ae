namespace Strata.Images;

/// <summary>An image could not be opened, read or written; the message names the file and the problem.</summary>
public class ImageException : Exception
{
    public ImageException(string message) : base(message) { }
    public ImageException(string message, Exception inner) : base(message, inner) { }
    public ImageException() { }

    /// <summary>
    /// The message without the file name the library appends for context (": 'f'", " in 'f'", " ('f')", " of 'f'"),
    /// for callers that, like QEMU, name the file themselves or not at all.
    /// </summary>
    public static string MessageWithoutFileName(Exception e, string? fileName)
    {
        string m = e.Message;
        if (fileName != null)
        {
            foreach (var suffix in new[] { $": '{fileName}'", $" in '{fileName}'", $" ('{fileName}')", $" of '{fileName}'" })
                if (m.EndsWith(suffix, StringComparison.Ordinal))
                    return m[..^suffix.Length];
        }
        return m;
    }
}

/// <summary>The image's metadata is inconsistent or hostile; the image was refused (or marked corrupt).</summary>
public sealed class CorruptImageException : ImageException
{
    public CorruptImageException(string message) : base(message) { }
    public CorruptImageException(string message, Exception inner) : base(message, inner) { }
    public CorruptImageException() { }
}

/// <summary>The image uses a feature Strata does not implement (encryption, unknown incompatible bits, ...).</summary>
public sealed class UnsupportedFeatureException : ImageException
{
    public UnsupportedFeatureException(string message) : base(message) { }
    public UnsupportedFeatureException(string message, Exception inner) : base(message, inner) { }
    public UnsupportedFeatureException() { }
}
