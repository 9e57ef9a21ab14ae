using System.Text.Json.Nodes;

namespace Strata.Block.Drivers.Blkdebug;

/// <summary>QEMU's blkdebug:CONFIG:IMAGE file names (an empty CONFIG means no config file), e.g. as a backing file name.</summary>
public static class BlkdebugFilename
{
    public const string Prefix = "blkdebug:";

    public static bool Is(string name) => name.StartsWith(Prefix, StringComparison.Ordinal);

    /// <summary>blkdebug_parse_filename: the node's options, with the image as a file node.</summary>
    public static JsonObject ToOptions(string name)
    {
        string rest = name[Prefix.Length..];
        int colon = rest.IndexOf(':', StringComparison.Ordinal);
        if (colon < 0)
            throw new BlockException("blkdebug requires both config file and image path");
        var options = new JsonObject { ["driver"] = "blkdebug" };
        if (colon > 0)
            options["config"] = rest[..colon];
        options["image"] = new JsonObject { ["driver"] = "file", ["filename"] = rest[(colon + 1)..] };
        return options;
    }

    /// <summary>The host file a blkdebug name reads from (what the format is probed on).</summary>
    public static string ImagePath(string name)
    {
        string rest = name[Prefix.Length..];
        int colon = rest.IndexOf(':', StringComparison.Ordinal);
        return colon < 0 ? rest : rest[(colon + 1)..];
    }
}
