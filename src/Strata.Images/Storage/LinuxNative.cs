using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Strata.Images.Storage;

/// <summary>
/// The libc calls .NET does not expose: open with O_DIRECT, fallocate, lseek SEEK_DATA/SEEK_HOLE,
/// ftruncate without .NET's checks, fdatasync and statx. 64-bit Linux only (off_t is 64-bit there,
/// so the plain symbol names take <see cref="long"/> offsets). Each wrapper returns 0 or an errno,
/// retrying EINTR, so callers decide which errors are fatal.
/// </summary>
internal static unsafe partial class LinuxNative
{
    private const string Libc = "libc";

    // Identical on x86_64 and aarch64 (asm-generic); O_DIRECT is the exception, see ODirect.
    internal const int O_RDONLY = 0;
    internal const int O_RDWR = 2;
    internal const int O_CREAT = 0x40;
    internal const int O_TRUNC = 0x200;
    internal const int O_CLOEXEC = 0x80000;

    internal const int FALLOC_FL_KEEP_SIZE = 0x01;
    internal const int FALLOC_FL_PUNCH_HOLE = 0x02;
    internal const int FALLOC_FL_ZERO_RANGE = 0x10;

    internal const int SEEK_END = 2;
    internal const int SEEK_DATA = 3;
    internal const int SEEK_HOLE = 4;

    internal const int EINTR = 4;
    internal const int ENOENT = 2;
    internal const int ENXIO = 6;
    internal const int EINVAL = 22;
    internal const int ENOSYS = 38;
    internal const int EOPNOTSUPP = 95;

    private const int AT_EMPTY_PATH = 0x1000;
    internal const uint STATX_TYPE = 0x0001;
    internal const uint STATX_BLOCKS = 0x0400;
    internal const uint STATX_DIOALIGN = 0x2000;
    internal const int S_IFMT = 0xF000;
    internal const int S_IFDIR = 0x4000;
    internal const int S_IFREG = 0x8000;

    /// <summary>O_DIRECT differs per architecture: 0x4000 in asm-generic (x86, riscv, loongarch, s390),
    /// 0x10000 on arm/arm64, 0x20000 on powerpc.</summary>
    internal static int ODirect => RuntimeInformation.ProcessArchitecture switch
    {
        Architecture.Arm or Architecture.Arm64 or Architecture.Armv6 => 0x10000,
        Architecture.Ppc64le => 0x20000,
        _ => 0x4000,
    };

    /// <summary>struct statx from linux/stat.h; its layout is the same on every architecture (0x100 bytes).</summary>
    [StructLayout(LayoutKind.Explicit, Size = 0x100)]
    internal struct Statx
    {
        [FieldOffset(0x00)] public uint Mask;
        [FieldOffset(0x1C)] public ushort Mode;
        [FieldOffset(0x28)] public ulong Size;
        [FieldOffset(0x30)] public ulong Blocks;
        [FieldOffset(0x98)] public uint DioMemAlign;
        [FieldOffset(0x9C)] public uint DioOffsetAlign;
    }

    // Open file description locks (fcntl.h, identical on x86_64 and aarch64).
    internal const int F_OFD_GETLK = 36;
    internal const int F_OFD_SETLK = 37;
    internal const short F_RDLCK = 0;
    internal const short F_WRLCK = 1;
    internal const short F_UNLCK = 2;
    private const short SEEK_SET = 0;

    /// <summary>struct flock on 64-bit Linux: l_type, l_whence, then 64-bit l_start and l_len, then l_pid (32 bytes).</summary>
    [StructLayout(LayoutKind.Explicit, Size = 32)]
    internal struct Flock
    {
        [FieldOffset(0)] public short Type;
        [FieldOffset(2)] public short Whence;
        [FieldOffset(8)] public long Start;
        [FieldOffset(16)] public long Length;
        [FieldOffset(24)] public int Pid;
    }

    [LibraryImport(Libc, EntryPoint = "fcntl", SetLastError = true)]
    private static partial int SysFcntlLock(SafeFileHandle fd, int cmd, Flock* lk);

    [LibraryImport(Libc, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SysOpen(string path, int flags, uint mode);

    [LibraryImport(Libc, EntryPoint = "fallocate", SetLastError = true)]
    private static partial int SysFallocate(SafeFileHandle fd, int mode, long offset, long length);

    [LibraryImport(Libc, EntryPoint = "lseek", SetLastError = true)]
    private static partial long SysLseek(SafeFileHandle fd, long offset, int whence);

    [LibraryImport(Libc, EntryPoint = "ftruncate", SetLastError = true)]
    private static partial int SysFtruncate(SafeFileHandle fd, long length);

    [LibraryImport(Libc, EntryPoint = "fdatasync", SetLastError = true)]
    private static partial int SysFdatasync(SafeFileHandle fd);

    [LibraryImport(Libc, EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SysStatx(SafeFileHandle dirfd, string path, int flags, uint mask, Statx* buffer);

    /// <summary>open(2); returns the fd, or -errno.</summary>
    internal static int Open(string path, int flags, uint mode)
    {
        while (true)
        {
            int fd = SysOpen(path, flags, mode);
            if (fd >= 0)
                return fd;
            int errno = Marshal.GetLastPInvokeError();
            if (errno != EINTR)
                return -errno;
        }
    }

    internal static int Fallocate(SafeFileHandle fd, int mode, long offset, long length)
    {
        while (true)
        {
            if (SysFallocate(fd, mode, offset, length) == 0)
                return 0;
            int errno = Marshal.GetLastPInvokeError();
            if (errno != EINTR)
                return errno;
        }
    }

    /// <summary>lseek(2); returns the resulting offset, or -errno.</summary>
    internal static long Lseek(SafeFileHandle fd, long offset, int whence)
    {
        long result = SysLseek(fd, offset, whence);
        return result >= 0 ? result : -Marshal.GetLastPInvokeError();
    }

    internal static int Ftruncate(SafeFileHandle fd, long length)
    {
        while (true)
        {
            if (SysFtruncate(fd, length) == 0)
                return 0;
            int errno = Marshal.GetLastPInvokeError();
            if (errno != EINTR)
                return errno;
        }
    }

    private const uint SYNC_FILE_RANGE_WRITE = 2;

    [LibraryImport(Libc, EntryPoint = "sync_file_range", SetLastError = true)]
    private static partial int SysSyncFileRange(SafeFileHandle fd, long offset, long nbytes, uint flags);

    /// <summary>Starts writeback of the file's dirty pages (a hint: errors are left to the next fdatasync).</summary>
    internal static void StartWriteback(SafeFileHandle fd)
    {
        while (SysSyncFileRange(fd, 0, 0, SYNC_FILE_RANGE_WRITE) != 0 && Marshal.GetLastPInvokeError() == EINTR)
        {
        }
    }

    internal static int Fdatasync(SafeFileHandle fd)
    {
        while (true)
        {
            if (SysFdatasync(fd) == 0)
                return 0;
            int errno = Marshal.GetLastPInvokeError();
            if (errno != EINTR)
                return errno;
        }
    }

    /// <summary>statx on the open file itself (AT_EMPTY_PATH).</summary>
    internal static int Fstatx(SafeFileHandle fd, uint mask, out Statx result)
    {
        Statx buffer = default;
        int errno = 0;
        if (SysStatx(fd, "", AT_EMPTY_PATH, mask, &buffer) != 0)
            errno = Marshal.GetLastPInvokeError();
        result = buffer;
        return errno;
    }

    /// <summary>Takes (F_RDLCK, F_WRLCK) or drops (F_UNLCK) an OFD lock on [start, start+length) without waiting; 0 or an errno.</summary>
    internal static int OfdSetLock(SafeFileHandle fd, short type, long start, long length)
    {
        var lk = new Flock { Type = type, Whence = SEEK_SET, Start = start, Length = length };
        while (true)
        {
            if (SysFcntlLock(fd, F_OFD_SETLK, &lk) == 0)
                return 0;
            int errno = Marshal.GetLastPInvokeError();
            if (errno != EINTR)
                return errno;
        }
    }

    /// <summary>F_OFD_GETLK: the type of lock another open file description holds that would block <paramref name="type"/>
    /// on the range (F_UNLCK if none), or -errno.</summary>
    internal static int OfdTestLock(SafeFileHandle fd, short type, long start, long length)
    {
        var lk = new Flock { Type = type, Whence = SEEK_SET, Start = start, Length = length };
        while (true)
        {
            if (SysFcntlLock(fd, F_OFD_GETLK, &lk) == 0)
                return lk.Type;
            int errno = Marshal.GetLastPInvokeError();
            if (errno != EINTR)
                return -errno;
        }
    }

    /// <summary>strerror text ("No space left on device").</summary>
    internal static string Describe(int errno) => Marshal.GetPInvokeErrorMessage(errno);
}
