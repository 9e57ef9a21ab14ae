namespace Strata.Images.Qcow2;

/// <summary>
/// A snapshot operation failed the way QEMU's would: <see cref="Errno"/> is the strerror text QEMU appends
/// ("No such file or directory", "File too large", ...), and <see cref="Report"/>, when set, is the line QEMU
/// prints on its own before that (error_report_err of a detailed error).
/// </summary>
public sealed class SnapshotException : ImageException
{
    public SnapshotException(string errno, string? report = null, string? detail = null)
        : base(detail ?? report ?? errno)
    {
        Errno = errno;
        Report = report;
        Detail = detail;
    }

    public SnapshotException() : this("Input/output error") { }
    public SnapshotException(string message, Exception inner) : base(message, inner) => Errno = message;

    public string Errno { get; }
    public string? Report { get; }

    /// <summary>A message QEMU gives instead of the strerror text (error_setg without errno), e.g. "Can't find the snapshot".</summary>
    public string? Detail { get; }

    internal const string ENOENT = "No such file or directory";
    internal const string EFBIG = "File too large";
    internal const string EINVAL = "Invalid argument";
    internal const string ENOTSUP = "Operation not supported";
    internal const string EBUSY = "Device or resource busy";
    internal const string ERANGE = "Numerical result out of range";
}
