namespace Strata.Qmp.Tests;

internal static class QmpTestData
{
    public static VersionInfo QsdVersion { get; } = new()
    {
        Qemu = new VersionTriple { Major = 7, Minor = 2, Micro = 22 },
        Package = "Debian 1:7.2+dfsg-7+deb12u18+b3",
    };

    /// <summary>Messages qemu-storage-daemon 7.2 sent, one per line, exactly as received (without CR LF).</summary>
    public static IReadOnlyList<string> QsdMessages { get; } =
        File.ReadAllLines(Path.Combine(AppContext.BaseDirectory, "Data", "qsd-7.2-messages.jsonl"))
            .Where(l => l.Length > 0)
            .ToArray();
}
