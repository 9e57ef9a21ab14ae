using Strata.Images;
using Strata.Images.Format;
using Strata.Images.Storage;

namespace Strata.Img.Cli;

/// <summary>qemu-img's img_open: opens an image by name, reporting failures as "Could not open 'x': ...".</summary>
public static class ImageOpen
{
    /// <param name="forceShare">-U: take no share-restricting locks (read-only images only).</param>
    /// <param name="noIo">Opened for metadata only (info): no consistent-read lock.</param>
    /// <param name="resize">Take the resize permission (resize).</param>
    /// <param name="noShare">Let nobody else write while open (convert's sources).</param>
    public static async Task<IImage> OpenAsync(string filename, string? fmt, bool writable = false,
        bool noBacking = false, bool forCheck = false, bool direct = false, bool noFlush = false, bool forceShare = false,
        bool noIo = false, bool resize = false, bool noShare = false, CancellationToken ct = default)
    {
        if (fmt != null && !ImageOpener.SupportedFormats.Contains(fmt))
            throw Io.Fail($"Could not open '{filename}': Unknown driver '{fmt}'");
        if (forceShare && writable)
            throw Io.Fail($"Could not open '{filename}': force-share=on can only be used with read-only images");
        try
        {
            if (fmt == null && writable && File.Exists(filename))
            {
                // QEMU warns when it probes a raw image it opens for writing.
                await using var probe = ImageOpener.OpenStorage(filename, new ImageOpenOptions { ReadOnly = true });
                if (await ImageOpener.ProbeAsync(probe, ct) == "raw")
                    Io.ErrorRaw($"WARNING: Image format was not specified for '{filename}' and probing guessed raw.\n" +
                        "         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n" +
                        "         Specify the 'raw' format explicitly to remove the restrictions.\n");
            }
            return await ImageOpener.OpenAsync(filename, new ImageOpenOptions
            {
                Format = fmt,
                ReadOnly = !writable,
                Backing = noBacking ? BackingPolicy.None : BackingPolicy.Open,
                ForCheck = forCheck,
                Direct = direct,
                NoFlush = noFlush,
                Lock = true,
                ForceShare = forceShare,
                NoIo = noIo,
                Resize = resize,
                NoShare = noShare,
            }, ct);
        }
        catch (ImageLockException e)
        {
            // The hint goes on a line of its own.
            Io.Error($"Could not open '{filename}': {e.Message}", e.Hint is null ? null : e.Hint + "\n");
            throw new ExitException(1);
        }
        catch (Exception e) when (e is ImageException or IOException or UnauthorizedAccessException)
        {
            throw Io.Fail($"Could not open '{filename}': {Describe(e, filename)}");
        }
    }

    /// <summary>Message text of a library exception (I/O errors keep their message).</summary>
    public static string Describe(Exception e, string? fileName = null) => ImageException.MessageWithoutFileName(e, fileName);
}
