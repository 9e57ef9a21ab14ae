using System.Text.RegularExpressions;

namespace Strata.Testing;

/// <summary>
/// Publishes one of Strata's executables with NativeAOT, as a user or the benchmarks do, so tests can check the
/// compile (no trimming or AOT analysis warnings) and run the native binary itself.
/// </summary>
public static partial class NativeAotPublish
{
    private static readonly TimeSpan Timeout = TimeSpan.FromMinutes(10);

    /// <summary>
    /// Runs <c>dotnet publish -c Release</c> on <paramref name="project"/> (relative to the repository root, e.g.
    /// <c>src/Strata.Daemon</c>) into <paramref name="outputDirectory"/>; returns the publish log. Throws if it fails.
    /// </summary>
    public static string Run(string project, string outputDirectory)
    {
        var result = QemuTools.Run("dotnet", Timeout,
            "publish", Path.Combine(RepositoryRoot(), project), "-c", "Release", "-o", outputDirectory,
            "-nologo", "-nodeReuse:false", "-p:UseSharedCompilation=false");
        result.EnsureSuccess();
        return result.StdOut + result.StdErr;
    }

    /// <summary>The trimming (IL2xxx) and AOT (IL3xxx) analysis warnings in a publish log.</summary>
    public static IReadOnlyList<string> AnalysisWarnings(string log) =>
        [.. log.Split('\n').Where(l => AnalysisWarning().IsMatch(l)).Select(l => l.Trim()).Distinct()];

    /// <summary>Whether an ELF executable is position-dependent (e_type ET_EXEC rather than ET_DYN).</summary>
    public static bool IsPositionDependent(string elfPath)
    {
        ReadOnlySpan<byte> magic = [0x7f, (byte)'E', (byte)'L', (byte)'F'];
        Span<byte> header = stackalloc byte[18];
        using var file = File.OpenRead(elfPath);
        file.ReadExactly(header);
        if (!header[..4].SequenceEqual(magic))
            throw new InvalidDataException($"{elfPath} is not an ELF file");
        return BitConverter.ToUInt16(header[16..]) == 2;
    }

    private static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Strata.slnx")))
                return dir.FullName;
        }
        throw new DirectoryNotFoundException($"no Strata.slnx above {AppContext.BaseDirectory}");
    }

    [GeneratedRegex(@"warning IL[23]\d{3}")]
    private static partial Regex AnalysisWarning();
}
