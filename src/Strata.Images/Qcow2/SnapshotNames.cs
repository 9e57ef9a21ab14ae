using System.Globalization;

namespace Strata.Images.Qcow2;

/// <summary>Strata's generated snapshot names (strata-img snapshot -C, a name-less blockdev-snapshot-internal-sync).</summary>
public static class SnapshotNames
{
    /// <summary>
    /// "snap-YYYYMMDD-HHMMSS" in UTC, with "-2", "-3", ... appended when that name is taken (two snapshots in the same
    /// second). QEMU accepts an empty name in some places, so an omitted name must not mean "".
    /// </summary>
    public static string Unique(IReadOnlyList<Qcow2Snapshot> existing, DateTimeOffset now)
    {
        ArgumentNullException.ThrowIfNull(existing);
        string stem = "snap-" + now.UtcDateTime.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture);
        var taken = new HashSet<string>(existing.Select(s => s.Name), StringComparer.Ordinal);
        if (!taken.Contains(stem))
            return stem;
        for (int n = 2; ; n++)
            if (!taken.Contains($"{stem}-{n}"))
                return $"{stem}-{n}";
    }
}
