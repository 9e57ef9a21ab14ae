using Strata.Img.Cli;

namespace Strata.Img.Commands;

/// <summary>Command-line pieces shared by rebase, commit, amend and bench.</summary>
internal static class ChainCli
{
    /// <summary>QEMU's bdrv_parse_cache_mode: (O_DIRECT, no flushes, writethrough), or null for an unknown mode.</summary>
    public static (bool Direct, bool NoFlush, bool Writethrough)? ParseCacheMode(string mode) => mode switch
    {
        "off" or "none" => (true, false, false),
        "directsync" => (true, false, true),
        "writeback" => (false, false, false),
        "unsafe" => (false, true, false),
        "writethrough" => (false, false, true),
        _ => null,
    };

    /// <summary>Format names QEMU 7.2's bdrv_find_format knows (a backing format may name one Strata cannot open).</summary>
    public static readonly HashSet<string> QemuFormats = new(StringComparer.Ordinal)
    {
        "raw", "qcow2", "qcow", "qed", "vmdk", "vdi", "vhdx", "vpc", "parallels", "luks", "bochs", "cloop", "dmg",
        "file", "host_device", "host_cdrom", "nbd", "blkdebug", "blkverify", "null-co", "null-aio", "nvme", "ssh",
        "http", "https", "ftp", "ftps", "iscsi", "rbd", "gluster", "nfs", "copy-on-read", "throttle", "quorum",
        "compress", "replication", "snapshot-access", "preallocate", "vvfat",
    };

    /// <summary>
    /// --image-opts: the file name is a key=value list. Returns (file name, driver) from "driver=..." and
    /// "file.filename=..." (or "file=..."); anything else is refused with QEMU's wording.
    /// </summary>
    public static (string FileName, string? Driver) ParseImageOpts(string spec)
    {
        string? file = null, driver = null;
        foreach (var (name, value, _) in QemuOpts.Split(spec))
        {
            switch (name)
            {
                case "driver": driver = value; break;
                case "file.filename":
                case "file":
                case "filename": file = value; break;
                case "file.driver": break;
                default: throw Io.Fail($"Invalid parameter '{name}'");
            }
        }
        if (file == null)
            throw Io.Fail("A block device must be specified for \"file\"");
        return (file, driver);
    }
}
