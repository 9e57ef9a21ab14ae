using ZstdSharp.Unsafe;
using static Strata.Images.Qcow2.ZlibNative;

namespace Strata.Images.Qcow2;

/// <summary>qcow2 header field <c>compression_type</c> (byte 104; absent means zlib).</summary>
public enum CompressionType : byte
{
    /// <summary>Raw deflate with a 4 KiB window (QEMU's <c>qcow2_zlib_compress</c>).</summary>
    Zlib = 0,

    /// <summary>Zstandard frames, default level (QEMU's <c>qcow2_zstd_compress</c>).</summary>
    Zstd = 1,
}

/// <summary>
/// Compressed-cluster codecs, producing the bytes QEMU 7.2's <c>block/qcow2-threads.c</c> does and accepting
/// exactly what it accepts.
/// </summary>
/// <remarks>
/// <para>
/// Compression calls the same system libraries QEMU links to (<c>libz.so.1</c>, <c>libzstd.so.1</c>) with the
/// same parameters and the same single call, because only that reproduces QEMU's bytes: .NET's DeflateStream
/// cannot use a 4 KiB window, and zstd's output differs between library versions. zstd decompression uses the
/// managed ZstdSharp decoder (the format, unlike the encoder's choices, does not depend on the version).
/// </para>
/// <para>
/// Both methods are thread-safe and allocate nothing on the managed heap on the success path: zlib runs on a
/// stack <c>z_stream</c> (its state lives in native memory, created and freed per call exactly as QEMU does), and
/// zstd reuses one compression and one decompression context per thread, reset before every call (a reset
/// context produces the same bytes as a fresh one).
/// </para>
/// </remarks>
public static unsafe class Qcow2Compression
{
    /// <summary>QEMU: <c>deflateInit2(..., -12, ...)</c>: raw deflate (no zlib header/adler32), 2^12-byte window.</summary>
    private const int ZlibWindowBits = -12;

    /// <summary>QEMU: <c>deflateInit2(..., memLevel 9, ...)</c>.</summary>
    private const int ZlibMemLevel = 9;

    /// <summary>
    /// Compresses one whole cluster (<paramref name="cluster"/> is the full cluster). Returns the compressed
    /// length, or -1 when the result does not fit in <paramref name="destination"/>. Callers pass a buffer of
    /// at most <c>clusterSize - 1</c> bytes, as QEMU does, so that -1 means "store the cluster uncompressed".
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Unknown <paramref name="type"/>.</exception>
    /// <exception cref="ArgumentException"><paramref name="cluster"/> is empty.</exception>
    /// <exception cref="ImageException">The codec failed for a reason other than lack of space (out of memory).</exception>
    public static int Compress(CompressionType type, ReadOnlySpan<byte> cluster, Span<byte> destination)
    {
        if (cluster.IsEmpty)
        {
            throw new ArgumentException("A cluster to compress must not be empty.", nameof(cluster));
        }

        try
        {
            return type switch
            {
                CompressionType.Zlib => ZlibCompress(cluster, destination),
                CompressionType.Zstd => ZstdCompress(cluster, destination),
                _ => throw new ArgumentOutOfRangeException(nameof(type), type, "Unknown qcow2 compression type."),
            };
        }
        catch (DllNotFoundException e)
        {
            throw MissingLibrary(type, e);
        }
    }

    /// <summary>
    /// Fills <paramref name="cluster"/> exactly from <paramref name="compressed"/>, which is the cluster's
    /// sector-rounded span and so may carry trailing bytes after the compressed stream.
    /// </summary>
    /// <exception cref="CorruptImageException">The data is not a valid compressed cluster of this size.</exception>
    /// <exception cref="ArgumentOutOfRangeException">Unknown <paramref name="type"/>.</exception>
    /// <exception cref="ArgumentException"><paramref name="cluster"/> is empty.</exception>
    /// <returns>How many bytes of <paramref name="compressed"/> the decoder consumed.</returns>
    public static int Decompress(CompressionType type, ReadOnlySpan<byte> compressed, Span<byte> cluster)
    {
        if (cluster.IsEmpty)
        {
            throw new ArgumentException("The cluster buffer to decompress into must not be empty.", nameof(cluster));
        }

        try
        {
            switch (type)
            {
                case CompressionType.Zlib:
                    return ZlibDecompress(compressed, cluster);
                case CompressionType.Zstd:
                    return ZstdDecompress(compressed, cluster);
                default:
                    throw new ArgumentOutOfRangeException(nameof(type), type, "Unknown qcow2 compression type.");
            }
        }
        catch (DllNotFoundException e)
        {
            throw MissingLibrary(type, e);
        }
    }

    private static ImageException MissingLibrary(CompressionType type, DllNotFoundException e) => new(
        type == CompressionType.Zlib
            ? "qcow2 zlib compression needs the system zlib (libz.so.1, Debian package zlib1g): " + e.Message
            : "qcow2 zstd compression needs the system libzstd (libzstd.so.1, Debian package libzstd1): " + e.Message,
        e);

    // ---------------------------------------------------------------------------------------------
    // zlib (qcow2_zlib_compress / qcow2_zlib_decompress)
    // ---------------------------------------------------------------------------------------------

    private static int ZlibCompress(ReadOnlySpan<byte> src, Span<byte> dest)
    {
        if (dest.IsEmpty)
        {
            return -1;
        }

        ZStream strm = default;
        int ret = DeflateInit2(&strm, Z_DEFAULT_COMPRESSION, Z_DEFLATED, ZlibWindowBits, ZlibMemLevel, Z_DEFAULT_STRATEGY);
        if (ret != Z_OK)
        {
            throw new ImageException($"zlib deflateInit2 failed ({Describe(strm, ret)}; libz {RuntimeVersion}).");
        }

        try
        {
            fixed (byte* srcPtr = src)
            fixed (byte* destPtr = dest)
            {
                strm.next_in = srcPtr;
                strm.avail_in = (uint)src.Length;
                strm.next_out = destPtr;
                strm.avail_out = (uint)dest.Length;

                ret = deflate(&strm, Z_FINISH);
                if (ret == Z_STREAM_END)
                {
                    return dest.Length - (int)strm.avail_out;
                }

                // Z_OK: ran out of output space before the end (QEMU: -ENOMEM, "not compressible"). Note that
                // zlib also returns Z_OK when the stream fits the buffer *exactly* (it wants room to be sure it
                // is done), so, as in QEMU, an exact fit counts as "does not fit".
                // Z_BUF_ERROR: no progress possible, which with Z_FINISH and input pending is also lack of space.
                if (ret is Z_OK or Z_BUF_ERROR)
                {
                    return -1;
                }

                throw new ImageException($"zlib deflate failed ({Describe(strm, ret)}).");
            }
        }
        finally
        {
            _ = deflateEnd(&strm); // Z_DATA_ERROR just says the stream was unfinished: expected when it did not fit.
        }
    }

    private static int ZlibDecompress(ReadOnlySpan<byte> src, Span<byte> dest)
    {
        ZStream strm = default;
        int ret = InflateInit2(&strm, ZlibWindowBits);
        if (ret != Z_OK)
        {
            throw new ImageException($"zlib inflateInit2 failed ({Describe(strm, ret)}; libz {RuntimeVersion}).");
        }

        try
        {
            fixed (byte* srcPtr = src)
            fixed (byte* destPtr = dest)
            {
                strm.next_in = srcPtr;
                strm.avail_in = (uint)src.Length;
                strm.next_out = destPtr;
                strm.avail_out = (uint)dest.Length;

                ret = inflate(&strm, Z_FINISH);

                // Z_BUF_ERROR with a full output buffer is success: the span is whole sectors, so the input
                // may go on past the end of the deflate stream (or the stream may go on past the cluster).
                if ((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && strm.avail_out == 0)
                {
                    return src.Length - (int)strm.avail_in;
                }

                int produced = dest.Length - (int)strm.avail_out;
                throw ret switch
                {
                    Z_STREAM_END => new CorruptImageException(
                        $"Compressed cluster (zlib) is too short: the deflate stream ends after {produced} of {dest.Length} bytes."),
                    Z_BUF_ERROR => new CorruptImageException(
                        $"Compressed cluster (zlib) is truncated: {src.Length} compressed bytes produced only {produced} of {dest.Length} bytes."),
                    Z_MEM_ERROR => new ImageException("zlib inflate ran out of memory."),
                    _ => new CorruptImageException(
                        $"Compressed cluster (zlib) is corrupt after {produced} of {dest.Length} bytes ({Describe(strm, ret)})."),
                };
            }
        }
        finally
        {
            _ = inflateEnd(&strm); // nothing to report: the state is freed either way.
        }
    }

    // ---------------------------------------------------------------------------------------------
    // zstd (qcow2_zstd_compress / qcow2_zstd_decompress)
    // ---------------------------------------------------------------------------------------------

    private static int ZstdCompress(ReadOnlySpan<byte> src, Span<byte> dest)
    {
        if (dest.IsEmpty)
        {
            return -1;
        }

        void* cctx = ZstdContexts.ForCurrentThread.CompressionContext();

        // QEMU uses a fresh ZSTD_createCCtx(): every parameter at its default (level ZSTD_CLEVEL_DEFAULT = 3,
        // no checksum; the content size is written because the whole input comes with ZSTD_e_end).
        // Resetting session and parameters gives the same state, and the same output.
        nuint reset = ZstdNative.ZSTD_CCtx_reset(cctx, ZstdNative.ZSTD_reset_session_and_parameters);
        if (ZstdNative.ZSTD_isError(reset) != 0)
        {
            throw new ImageException($"zstd context reset failed ({ZstdNative.ErrorName(reset)}).");
        }

        fixed (byte* srcPtr = src)
        fixed (byte* destPtr = dest)
        {
            var input = new ZstdNative.Buffer { ptr = srcPtr, size = (nuint)src.Length, pos = 0 };
            var output = new ZstdNative.Buffer { ptr = destPtr, size = (nuint)dest.Length, pos = 0 };

            // One call with ZSTD_e_end, as QEMU: a nonzero result means the frame did not fit in dest.
            nuint ret = ZstdNative.ZSTD_compressStream2(cctx, &output, &input, ZstdNative.ZSTD_e_end);
            if (ret == 0)
            {
                return checked((int)output.pos);
            }

            if (ZstdNative.ZSTD_isError(ret) == 0)
            {
                return -1; // bytes still to flush: out of room
            }

            return ZstdNative.ZSTD_getErrorCode(ret) switch
            {
                ZstdNative.ZSTD_error_dstSize_tooSmall => -1,
                ZstdNative.ZSTD_error_memory_allocation => throw new ImageException("zstd compression ran out of memory."),
                _ => throw new ImageException($"zstd compression failed ({ZstdNative.ErrorName(ret)})."),
            };
        }
    }

    private static int ZstdDecompress(ReadOnlySpan<byte> src, Span<byte> dest)
    {
        ZSTD_DCtx_s* dctx = ZstdContexts.ForCurrentThread.DecompressionContext();

        // Drop whatever a previous (possibly failed) call left in the context.
        nuint reset = Methods.ZSTD_DCtx_reset(dctx, ZSTD_ResetDirective.ZSTD_reset_session_only);
        if (Methods.ZSTD_isError(reset))
        {
            throw new ImageException($"zstd context reset failed ({Methods.ZSTD_getErrorName(reset)}).");
        }

        fixed (byte* srcPtr = src)
        fixed (byte* destPtr = dest)
        {
            var input = new ZSTD_inBuffer_s { src = srcPtr, size = (nuint)src.Length, pos = 0 };
            var output = new ZSTD_outBuffer_s { dst = destPtr, size = (nuint)dest.Length, pos = 0 };

            // The span may hold several frames; decode until the cluster is full, then ignore the rest
            // (sector-tail bytes). Like QEMU, insist on progress at each step so bad input cannot loop forever.
            nuint ret = 0;
            while (output.pos < output.size)
            {
                nuint lastIn = input.pos;
                nuint lastOut = output.pos;
                ret = Methods.ZSTD_decompressStream(dctx, &output, &input);
                if (Methods.ZSTD_isError(ret))
                {
                    if (Methods.ZSTD_getErrorCode(ret) == ZSTD_ErrorCode.ZSTD_error_memory_allocation)
                    {
                        throw new ImageException("zstd decompression ran out of memory.");
                    }

                    throw new CorruptImageException(
                        $"Compressed cluster (zstd) is corrupt at input byte {input.pos} after {output.pos} of {dest.Length} bytes ({Methods.ZSTD_getErrorName(ret)}).");
                }

                if (input.pos <= lastIn && output.pos <= lastOut)
                {
                    throw new CorruptImageException(
                        $"Compressed cluster (zstd) is truncated: {src.Length} compressed bytes produced only {output.pos} of {dest.Length} bytes.");
                }
            }

            // QEMU: the frame that filled the cluster must be complete; more data means it decodes to more than
            // a cluster, i.e. it is damaged.
            if (ret != 0)
            {
                throw new CorruptImageException(
                    $"Compressed cluster (zstd) decodes to more than the cluster size of {dest.Length} bytes.");
            }

            return checked((int)input.pos);
        }
    }

    /// <summary>
    /// One zstd compression context (system libzstd) and one decompression context (ZstdSharp) per thread,
    /// created on first use and freed by the finalizer once the thread has ended.
    /// </summary>
    private sealed class ZstdContexts
    {
        [ThreadStatic]
        private static ZstdContexts? t_current;

        private void* _cctx;
        private ZSTD_DCtx_s* _dctx;

        public static ZstdContexts ForCurrentThread => t_current ??= new ZstdContexts();

        public void* CompressionContext()
        {
            if (_cctx == null)
            {
                _cctx = ZstdNative.ZSTD_createCCtx();
                if (_cctx == null)
                {
                    throw new ImageException("Could not create a zstd compression context (out of memory).");
                }
            }

            return _cctx;
        }

        public ZSTD_DCtx_s* DecompressionContext()
        {
            if (_dctx == null)
            {
                _dctx = Methods.ZSTD_createDCtx();
                if (_dctx == null)
                {
                    throw new ImageException("Could not create a zstd decompression context (out of memory).");
                }
            }

            return _dctx;
        }

        ~ZstdContexts()
        {
            if (_cctx != null)
            {
                _ = ZstdNative.ZSTD_freeCCtx(_cctx);
                _cctx = null;
            }

            if (_dctx != null)
            {
                _ = Methods.ZSTD_freeDCtx(_dctx);
                _dctx = null;
            }
        }
    }
}
