using System.Runtime.InteropServices;

namespace Strata.Images.Qcow2;

/// <summary>
/// Direct bindings to the system zlib (Debian's zlib1g, <c>libz.so.1</c>).
/// </summary>
/// <remarks>
/// .NET's <see cref="System.IO.Compression.DeflateStream"/> cannot select <c>windowBits = -12</c>, and qcow2's
/// zlib clusters must be byte-identical to what QEMU writes, so the codec calls the same library QEMU does.
/// Only blittable pointer/int signatures are used: the generated stubs do no marshalling and allocate nothing.
/// </remarks>
internal static unsafe partial class ZlibNative
{
    private const string Library = "libz.so.1";

    /// <summary>
    /// The zlib.h version these bindings are written against (<c>ZLIB_VERSION</c>), NUL-terminated. zlib's
    /// <c>deflateInit2</c>/<c>inflateInit2</c> macros pass it along with <c>sizeof(z_stream)</c> so that the
    /// library can refuse an incompatible ABI (it checks the major digit and the struct size).
    /// </summary>
    internal static ReadOnlySpan<byte> HeaderVersion => "1.2.13\0"u8;

    internal const int Z_OK = 0;
    internal const int Z_STREAM_END = 1;
    internal const int Z_NEED_DICT = 2;
    internal const int Z_ERRNO = -1;
    internal const int Z_STREAM_ERROR = -2;
    internal const int Z_DATA_ERROR = -3;
    internal const int Z_MEM_ERROR = -4;
    internal const int Z_BUF_ERROR = -5;
    internal const int Z_VERSION_ERROR = -6;

    internal const int Z_FINISH = 4;

    internal const int Z_DEFAULT_COMPRESSION = -1;
    internal const int Z_DEFLATED = 8;
    internal const int Z_DEFAULT_STRATEGY = 0;

    /// <summary>
    /// <c>z_stream</c> from zlib.h. <c>uLong</c> is C <c>unsigned long</c> (<see cref="CULong"/>: 8 bytes on
    /// 64-bit Linux, so the struct is 112 bytes there with the natural alignment padding after the <c>uInt</c>
    /// and <c>int</c> fields).
    /// </summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct ZStream
    {
        public byte* next_in;
        public uint avail_in;
        public CULong total_in;

        public byte* next_out;
        public uint avail_out;
        public CULong total_out;

        public byte* msg;
        public void* state;

        public void* zalloc;
        public void* zfree;
        public void* opaque;

        public int data_type;
        public CULong adler;
        public CULong reserved;
    }

    [LibraryImport(Library, EntryPoint = "zlibVersion")]
    internal static partial byte* zlibVersion();

    [LibraryImport(Library, EntryPoint = "deflateInit2_")]
    internal static partial int deflateInit2_(
        ZStream* strm, int level, int method, int windowBits, int memLevel, int strategy, byte* version, int stream_size);

    [LibraryImport(Library, EntryPoint = "deflate")]
    internal static partial int deflate(ZStream* strm, int flush);

    [LibraryImport(Library, EntryPoint = "deflateEnd")]
    internal static partial int deflateEnd(ZStream* strm);

    [LibraryImport(Library, EntryPoint = "inflateInit2_")]
    internal static partial int inflateInit2_(ZStream* strm, int windowBits, byte* version, int stream_size);

    [LibraryImport(Library, EntryPoint = "inflate")]
    internal static partial int inflate(ZStream* strm, int flush);

    [LibraryImport(Library, EntryPoint = "inflateEnd")]
    internal static partial int inflateEnd(ZStream* strm);

    /// <summary>zlib.h's <c>deflateInit2</c> macro.</summary>
    internal static int DeflateInit2(ZStream* strm, int level, int method, int windowBits, int memLevel, int strategy)
    {
        fixed (byte* version = HeaderVersion)
        {
            return deflateInit2_(strm, level, method, windowBits, memLevel, strategy, version, sizeof(ZStream));
        }
    }

    /// <summary>zlib.h's <c>inflateInit2</c> macro.</summary>
    internal static int InflateInit2(ZStream* strm, int windowBits)
    {
        fixed (byte* version = HeaderVersion)
        {
            return inflateInit2_(strm, windowBits, version, sizeof(ZStream));
        }
    }

    /// <summary>The runtime library's version string (<c>zlibVersion()</c>), for diagnostics.</summary>
    internal static string RuntimeVersion => Marshal.PtrToStringUTF8((nint)zlibVersion()) ?? "?";

    /// <summary>zlib's <c>msg</c> for the last error, or the return code's name when zlib set none.</summary>
    internal static string Describe(in ZStream strm, int ret)
    {
        string? msg = strm.msg == null ? null : Marshal.PtrToStringUTF8((nint)strm.msg);
        string code = ret switch
        {
            Z_OK => "Z_OK",
            Z_STREAM_END => "Z_STREAM_END",
            Z_NEED_DICT => "Z_NEED_DICT",
            Z_ERRNO => "Z_ERRNO",
            Z_STREAM_ERROR => "Z_STREAM_ERROR",
            Z_DATA_ERROR => "Z_DATA_ERROR",
            Z_MEM_ERROR => "Z_MEM_ERROR",
            Z_BUF_ERROR => "Z_BUF_ERROR",
            Z_VERSION_ERROR => "Z_VERSION_ERROR",
            _ => ret.ToString(System.Globalization.CultureInfo.InvariantCulture),
        };
        return msg is null ? code : $"{code}: {msg}";
    }
}

/// <summary>
/// Direct bindings to the system libzstd (Debian's libzstd1, <c>libzstd.so.1</c>; dpkg and qemu-utils depend on
/// it, so it is always there), used for compression only.
/// </summary>
/// <remarks>
/// zstd's output changes between library versions (ZstdSharp.Port 0.8.8 is zstd 1.5.7 and writes different
/// bytes at the default level than the 1.5.4 that Debian 12's QEMU 7.2 links to), so, as for zlib, the bytes QEMU
/// writes can only be reproduced by the library QEMU itself uses. Decompression is version-independent and stays
/// on the managed ZstdSharp decoder.
/// </remarks>
internal static unsafe partial class ZstdNative
{
    private const string Library = "libzstd.so.1";

    /// <summary><c>ZSTD_inBuffer</c> / <c>ZSTD_outBuffer</c>: a pointer and two <c>size_t</c>.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct Buffer
    {
        public byte* ptr;
        public nuint size;
        public nuint pos;
    }

    /// <summary><c>ZSTD_reset_session_and_parameters</c>.</summary>
    internal const int ZSTD_reset_session_and_parameters = 3;

    /// <summary><c>ZSTD_e_end</c>.</summary>
    internal const int ZSTD_e_end = 2;

    /// <summary><c>ZSTD_error_memory_allocation</c> (zstd_errors.h).</summary>
    internal const int ZSTD_error_memory_allocation = 64;

    /// <summary><c>ZSTD_error_dstSize_tooSmall</c> (zstd_errors.h).</summary>
    internal const int ZSTD_error_dstSize_tooSmall = 70;

    [LibraryImport(Library, EntryPoint = "ZSTD_versionNumber")]
    internal static partial uint ZSTD_versionNumber();

    [LibraryImport(Library, EntryPoint = "ZSTD_createCCtx")]
    internal static partial void* ZSTD_createCCtx();

    [LibraryImport(Library, EntryPoint = "ZSTD_freeCCtx")]
    internal static partial nuint ZSTD_freeCCtx(void* cctx);

    [LibraryImport(Library, EntryPoint = "ZSTD_CCtx_reset")]
    internal static partial nuint ZSTD_CCtx_reset(void* cctx, int reset);

    [LibraryImport(Library, EntryPoint = "ZSTD_compressStream2")]
    internal static partial nuint ZSTD_compressStream2(void* cctx, Buffer* output, Buffer* input, int endOp);

    [LibraryImport(Library, EntryPoint = "ZSTD_isError")]
    internal static partial uint ZSTD_isError(nuint code);

    [LibraryImport(Library, EntryPoint = "ZSTD_getErrorCode")]
    internal static partial int ZSTD_getErrorCode(nuint code);

    [LibraryImport(Library, EntryPoint = "ZSTD_getErrorName")]
    internal static partial byte* ZSTD_getErrorName(nuint code);

    /// <summary><c>ZSTD_getErrorName</c> as a string, for exception messages.</summary>
    internal static string ErrorName(nuint code) => Marshal.PtrToStringUTF8((nint)ZSTD_getErrorName(code)) ?? "?";

    /// <summary>The runtime library's version, e.g. <c>1.5.4</c>.</summary>
    internal static string RuntimeVersion
    {
        get
        {
            uint v = ZSTD_versionNumber();
            return $"{v / 10000}.{v / 100 % 100}.{v % 100}";
        }
    }
}
