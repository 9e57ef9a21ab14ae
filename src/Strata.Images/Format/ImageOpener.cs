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
        string backingPath = ResolveBackingPath(imagePath, h.BackingFileName!);
        if (!File.Exists(backingPath))
            throw new ImageException($"Could not open backing file: Could not open '{backingPath}': No such file or directory");
        var backingOptions = options with { Format = h.BackingFormat, ReadOnly = true, ForCheck = false };
        try
        {
            return await OpenChainAsync(backingPath, backingOptions, depth + 1, seen, ct).ConfigureAwait(false);
        }
        catch (ImageException e) when (!e.Message.StartsWith("Could not open backing file", StringComparison.Ordinal))
        {
            throw new ImageException($"Could not open backing file: {e.Message}", e);
        }
    }

    /// <summary>A backing name is relative to the directory of the image that names it (as QEMU resolves it).</summary>
    public static string ResolveBackingPath(string imagePath, string backingName)
    {
        if (Path.IsPathRooted(backingName) || backingName.Contains("://", StringComparison.Ordinal))
            return backingName;
        string? dir = Path.GetDirectoryName(imagePath);
        return string.IsNullOrEmpty(dir) ? backingName : Path.Combine(dir, backingName);
    }

    public static FileStorage OpenStorage(string path, ImageOpenOptions options)
    {
        try
        {
            return FileStorage.Open(path, new FileStorageOptions(options.ReadOnly, options.Direct, options.NoFlush));
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
