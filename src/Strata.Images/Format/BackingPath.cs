namespace Strata.Images.Format;

/// <summary>How QEMU turns the backing name an image records into a file name (block.c).</summary>
public static class BackingPath
{
    /// <summary>QEMU's path_has_protocol: a colon before any slash ("nbd:…", "json:{…}").</summary>
    public static bool HasProtocol(string path)
    {
        int i = path.IndexOfAny([':', '/']);
        return i >= 0 && path[i] == ':';
    }

    /// <summary>
    /// QEMU's bdrv_make_absolute_filename: a relative backing name lives in the directory of the image naming it. The
    /// result is not normalised ("dir/../base" stays so), as QEMU reports it.
    /// </summary>
    public static string Resolve(string imageName, string backing)
    {
        if (HasProtocol(backing) || backing.StartsWith('/'))
            return backing;
        int slash = imageName.LastIndexOf('/');
        return slash < 0 ? backing : imageName[..(slash + 1)] + backing;
    }
}
