namespace Strata.Block;

/// <summary>QEMU's rule for user-chosen ids (node names, job and export ids), in one place.</summary>
public static class QemuId
{
    /// <summary>QEMU's id_wellformed: a letter, then letters, digits, '-', '.', '_'.</summary>
    public static bool IsWellFormed(string id)
    {
        if (id.Length == 0 || !char.IsAsciiLetter(id[0]))
            return false;
        foreach (char c in id)
            if (!char.IsAsciiLetterOrDigit(c) && c is not ('-' or '.' or '_'))
                return false;
        return true;
    }
}
