using Strata.Images.Format;

namespace Strata.Img.Cli;

/// <summary>Image access as QEMU's block layer sees it.</summary>
public static class ImageIo
{
    /// <summary>
    /// The guest size QEMU reports: raw images are a whole number of 512-byte sectors (the tail past the
    /// end of the file reads as zeroes).
    /// </summary>
    public static long VirtualSize(IImage img) =>
        img.FormatName == "raw" ? (img.Size + 511) & ~511L : img.Size;

    /// <summary>Reads guest data; bytes past the image's real end read as zeroes.</summary>
    public static async ValueTask ReadAsync(IImage img, Memory<byte> buffer, long offset, CancellationToken ct = default)
    {
        long size = img.Size;
        if (offset >= size)
        {
            buffer.Span.Clear();
            return;
        }
        int n = (int)Math.Min(buffer.Length, size - offset);
        await img.ReadAsync(buffer[..n], offset, ct);
        if (n < buffer.Length)
            buffer.Span[n..].Clear();
    }
}
