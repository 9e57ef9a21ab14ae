using System.Buffers.Binary;
using Strata.Images.Qcow2;
using Strata.Images.Raw;
using Strata.Images.Storage;

namespace Strata.Images.Format;

/// <summary>What to do with backing files named inside an image.</summary>
public enum BackingPolicy
{
    /// <summary>Open the whole chain read-only (paths relative to the image that names them).</summary>
    Open,
    /// <summary>Open no backing file: unallocated ranges read as zeroes.</summary>
    None,
}

public sealed record ImageOpenOptions
{
    /// <summary>"qcow2" or "raw"; null probes the file (only for files the user named, never for backing files with a recorded format).</summary>
    public string? Format { get; init; }
    public bool ReadOnly { get; init; }
    public bool Direct { get; init; }
    public bool NoFlush { get; init; }
    public long? L2CacheSize { get; init; }
    public long? RefcountCacheSize { get; init; }
    public BackingPolicy Backing { get; init; } = BackingPolicy.Open;
    /// <summary>Open images even if they are dirty or corrupt, without repairing (for check).</summary>
    public bool ForCheck { get; init; }
    /// <summary>Backing chains deeper than this are refused (a guard against loops and hostile images).</summary>
    public int MaxChainDepth { get; init; } = 256;

    /// <summary>Take QEMU's image locks on every file of the chain (as qemu-img does); off for library users by default.</summary>
    public bool Lock { get; init; }
    /// <summary>QEMU's locking option for the files opened.</summary>
    public LockingMode Locking { get; init; } = LockingMode.Auto;
    /// <summary>-U / force-share: let others write and resize the files (read-only images only).</summary>
    public bool ForceShare { get; init; }
    /// <summary>The image is open only for its metadata (qemu-img info): no consistent-read permission.</summary>
    public bool NoIo { get; init; }
    /// <summary>The user will resize the image (qemu-img resize): take the resize permission.</summary>
    public bool Resize { get; init; }
    /// <summary>Nobody else may write or resize the image while it is open (qemu-img convert's sources).</summary>
    public bool NoShare { get; init; }
}

/// <summary>Opens images by file name: probes or checks the format, and opens backing chains by an explicit policy.</summary>
public static class ImageOpener
{
    public static readonly string[] SupportedFormats = ["qcow2", "raw"];

    public static ValueTask<IImage> OpenAsync(string path, ImageOpenOptions options, CancellationToken ct = default) =>
        OpenChainAsync(path, options, depth: 0, [], ct);

    private static async ValueTask<IImage> OpenChainAsync(string path, ImageOpenOptions options, int depth, HashSet<string> seen, CancellationToken ct)
    {
        string full = Path.GetFullPath(path);
        if (!seen.Add(full))
            throw new ImageException($"Backing chain of '{path}' loops back to '{full}'");
        if (depth > options.MaxChainDepth)
            throw new ImageException($"Backing chain of '{path}' is deeper than {options.MaxChainDepth} images");

        var file = OpenStorage(path, options);
        try
        {
            string format = options.Format ?? await ProbeAsync(file, ct).ConfigureAwait(false);
            if (options.Lock && format is "raw" or "qcow2")
            {
                var (perm, shared) = FilePermissions(format, options, depth);
                file.Lock.Set(perm, shared);
            }
            switch (format)
            {
                case "raw":
                    return new RawImage(file);
                case "qcow2":
                    var qopts = new Qcow2OpenOptions
                    {
                        L2CacheSize = options.L2CacheSize,
                        RefcountCacheSize = options.RefcountCacheSize,
                        ForCheck = options.ForCheck,
                        OpenBacking = options.Backing == BackingPolicy.Open
                            ? (h, c) => OpenBackingAsync(path, h, options, depth, seen, c)
                            : null,
                    };
                    return await Qcow2Image.OpenAsync(file, qopts, ct).ConfigureAwait(false);
                default:
                    throw new UnsupportedFeatureException($"Unknown driver '{format}'");
            }
        }
        catch
        {
            await file.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    private static async ValueTask<IImage?> OpenBackingAsync(string imagePath, Qcow2Header h, ImageOpenOptions options, int depth, HashSet<string> seen, CancellationToken ct)
    {
        string backingPath = BackingPath.Resolve(imagePath, h.BackingFileName!);
        if (!File.Exists(backingPath))
            throw new ImageException($"Could not open backing file: Could not open '{backingPath}': No such file or directory");
        var backingOptions = options with { Format = h.BackingFormat, ReadOnly = true, ForCheck = false };
        try
        {
            return await OpenChainAsync(backingPath, backingOptions, depth + 1, seen, ct).ConfigureAwait(false);
        }
        catch (ImageLockException e) when (!e.Message.StartsWith("Could not open backing file", StringComparison.Ordinal))
        {
            throw new ImageLockException($"Could not open backing file: {e.Message}", e.Hint);
        }
        catch (ImageException e) when (!e.Message.StartsWith("Could not open backing file", StringComparison.Ordinal))
        {
            throw new ImageException($"Could not open backing file: {e.Message}", e);
        }
    }

    /// <summary>
    /// The permissions QEMU's graph for qemu-img ends up taking on the file of the image <paramref name="depth"/> levels down
    /// the chain: the BlockBackend's (blk_new_open) passed down through the backing (COW) edges, then the format's rule for
    /// its file: qcow2 keeps metadata there (block.c's storage rule), raw passes requests through (a filter).
    /// </summary>
    private static (LockPermissions Perm, LockPermissions Shared) FilePermissions(string format, ImageOpenOptions options, int depth)
    {
        const LockPermissions cr = LockPermissions.ConsistentRead, w = LockPermissions.Write;
        const LockPermissions wu = LockPermissions.WriteUnchanged, rs = LockPermissions.Resize;
        var perm = (options.NoIo ? 0 : cr) | (options.ReadOnly ? 0 : w) | (options.Resize ? rs : 0);
        var shared = options.NoShare ? cr | wu : LockPermissions.All;
        for (int i = 0; i < depth; i++)
        {
            // A backing file is read only if its parent reads, and may change only under a parent that lets others write.
            perm &= cr;
            shared = ((shared & w) != 0 ? w | rs : 0) | cr | wu;
        }
        if (format == "qcow2")
        {
            if (!options.ReadOnly)
                perm |= w | rs;
            if (!options.NoIo)
                perm |= cr;
            shared &= ~(w | rs);
            if ((perm & wu) != 0)
                perm |= w;
            if ((perm & w) != 0)
                perm |= rs;
        }
        // force-share=on is inherited by every file of the chain: it shares everything.
        return (perm, options.ForceShare ? LockPermissions.All : shared);
    }


    public static FileStorage OpenStorage(string path, ImageOpenOptions options)
    {
        try
        {
            return FileStorage.Open(path, new FileStorageOptions(options.ReadOnly, options.Direct, options.NoFlush, options.Locking));
        }
        catch (FileNotFoundException)
        {
            throw new ImageException($"Could not open '{path}': No such file or directory");
        }
        catch (DirectoryNotFoundException)
        {
            throw new ImageException($"Could not open '{path}': No such file or directory");
        }
        catch (UnauthorizedAccessException)
        {
            throw new ImageException($"Could not open '{path}': Permission denied");
        }
    }

    /// <summary>qcow2 by its magic, raw otherwise.</summary>
    public static async ValueTask<string> ProbeAsync(IStorage file, CancellationToken ct = default)
    {
        if (file.Length < 8)
            return "raw";
        var b = new byte[8];
        await file.ReadAsync(b, 0, ct).ConfigureAwait(false);
        uint magic = BinaryPrimitives.ReadUInt32BigEndian(b);
        uint version = BinaryPrimitives.ReadUInt32BigEndian(b.AsSpan(4));
        return magic == 0x514649FB && version >= 2 ? "qcow2" : "raw";
    }
}
