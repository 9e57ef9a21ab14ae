namespace Strata.Nbd.Protocol;

/// <summary>Maps .NET exceptions and host errno values to NBD error values (Linux numbers), as QEMU's system_errno_to_nbd_errno().</summary>
public static class NbdErrors
{
    /// <summary>
    /// The NBD error for a failed operation: NotSupportedException → ENOTSUP, read-only → EPERM, out of space → ENOSPC,
    /// an IOException carrying an errno → QEMU's mapping of that errno, anything else → EIO.
    /// </summary>
    public static NbdError FromException(Exception exception)
    {
        for (Exception? e = exception; e != null; e = e.InnerException)
        {
            switch (e)
            {
                case NotSupportedException:
                    return NbdError.ENOTSUP;
                case UnauthorizedAccessException:
                    return NbdError.EPERM;
                case OutOfMemoryException or InsufficientMemoryException:
                    return NbdError.ENOMEM;
                case ArgumentException:
                    return NbdError.EINVAL;
                case IOException io when io.HResult is > 0 and < 4096:
                    return FromErrno(io.HResult);
            }
            if (e.Message.Contains("read-only", StringComparison.Ordinal) && e is InvalidOperationException or Images.ImageException)
                return NbdError.EPERM;
        }
        return NbdError.EIO;
    }

    /// <summary>QEMU's system_errno_to_nbd_errno() for Linux errno values.</summary>
    public static NbdError FromErrno(int errno) => errno switch
    {
        0 => NbdError.Success,
        1 or 30 => NbdError.EPERM,           // EPERM, EROFS
        5 => NbdError.EIO,
        12 => NbdError.ENOMEM,
        122 or 27 or 28 => NbdError.ENOSPC,  // EDQUOT, EFBIG, ENOSPC
        75 => NbdError.EOVERFLOW,
        95 => NbdError.ENOTSUP,              // EOPNOTSUPP = ENOTSUP on Linux
        108 => NbdError.ESHUTDOWN,
        _ => NbdError.EINVAL,
    };

    /// <summary>strerror() text of an NBD error value (glibc wording).</summary>
    public static string Describe(NbdError error) => error switch
    {
        NbdError.EPERM => "Operation not permitted",
        NbdError.EIO => "Input/output error",
        NbdError.ENOMEM => "Cannot allocate memory",
        NbdError.EINVAL => "Invalid argument",
        NbdError.ENOSPC => "No space left on device",
        NbdError.EOVERFLOW => "Value too large for defined data type",
        NbdError.ENOTSUP => "Operation not supported",
        NbdError.ESHUTDOWN => "Cannot send after transport endpoint shutdown",
        _ => "Success",
    };
}
