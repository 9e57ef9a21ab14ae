using Strata.Images;
using Strata.Images.Qcow2;
using Strata.Images.Storage;

namespace Strata.Block.Snapshots;

/// <summary>Creates the overlay file of blockdev-snapshot-sync as QEMU's bdrv_img_create does for it.</summary>
internal static class OverlayFile
{
    /// <summary>The image formats QEMU knows (for its "Unknown file format" message) and which of them take a backing file.</summary>
    private static readonly string[] Formats =
    [
        "blkdebug", "blklogwrites", "blkreplay", "blkverify", "bochs", "cloop", "compress", "copy-before-write", "copy-on-read", "dmg",
        "file", "snapshot-access", "ftp", "ftps", "gluster", "host_cdrom", "host_device", "http", "https", "iscsi", "luks", "nbd", "nfs",
        "null-aio", "null-co", "nvme", "parallels", "preallocate", "qcow", "qcow2", "qed", "quorum", "raw", "rbd", "replication", "ssh",
        "throttle", "vdi", "vhdx", "vmdk", "vpc", "vvfat",
    ];

    private static readonly string[] WithBacking = ["qcow", "qcow2", "qed", "vmdk", "parallels"];

    public static bool IsKnownFormat(string format) => Array.IndexOf(Formats, format) >= 0;

    /// <summary>bdrv_img_create's checks before it touches the file, in its order and words.</summary>
    public static void Validate(string path, string format, string backingName)
    {
        if (!IsKnownFormat(format))
            throw new BlockException($"Unknown file format '{format}'");
        if (Array.IndexOf(WithBacking, format) < 0)
            throw new BlockException($"Backing file not supported for file format '{format}'");
        if (path == backingName)
            throw new BlockException("Error: Trying to create an image with the same filename as the backing file");
        if (format != "qcow2")
            throw new BlockException($"strata-daemon cannot create '{format}' overlays (only qcow2)");
    }

    /// <summary>
    /// Writes a fresh qcow2 of <paramref name="size"/> bytes (rounded up to a sector) at <paramref name="path"/> with the
    /// given backing name and format, truncating an existing file as qemu-img does.
    /// </summary>
    public static async ValueTask CreateAsync(string path, string format, string backingName, string backingFormat, long size, CancellationToken ct)
    {
        FileStorage storage;
        try
        {
            storage = FileStorage.Create(path, new FileStorageOptions(ReadOnly: false));
        }
        catch (IOException e)
        {
            throw new BlockException(e.Message);
        }
        catch (UnauthorizedAccessException)
        {
            throw new BlockException($"Could not create '{path}': Permission denied");
        }
        try
        {
            var options = new Qcow2CreateOptions
            {
                Size = BlockNode.WholeSectors(size),
                BackingFile = backingName,
                BackingFormat = backingFormat,
            };
            var image = await Qcow2Creator.CreateAsync(storage, options, new Qcow2OpenOptions { OwnsStorage = false }, ct).ConfigureAwait(false);
            await image.DisposeAsync().ConfigureAwait(false);
        }
        catch (ImageException e)
        {
            throw new BlockException($"Could not create '{path}': {e.Message}", BlockErrorKind.Generic, e);
        }
        finally
        {
            await storage.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <summary>The backing name for relative-paths: the image's path as seen from the overlay's directory.</summary>
    public static string RelativeBackingName(string overlayPath, string imagePath)
    {
        string dir = Path.GetDirectoryName(Path.GetFullPath(overlayPath)) ?? "/";
        return Path.GetRelativePath(dir, Path.GetFullPath(imagePath));
    }
}
