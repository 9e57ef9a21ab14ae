namespace Strata.Testing;

/// <summary>
/// A unique scratch directory under /var/tmp/strata-tests (not /tmp: it may be tmpfs,
/// which refuses O_DIRECT), deleted with everything in it on dispose.
/// STRATA_TEST_TMPDIR overrides the root. Short names keep unix socket paths under 108 bytes.
/// </summary>
public sealed class TempDir : IDisposable
{
    public static string Root =>
        Environment.GetEnvironmentVariable("STRATA_TEST_TMPDIR") is { Length: > 0 } root ? root : "/var/tmp/strata-tests";

    public TempDir(string prefix = "t")
    {
        Directory.CreateDirectory(Root);
        Path = System.IO.Path.Combine(Root, $"{prefix}-{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..12]}");
        Directory.CreateDirectory(Path);
    }

    /// <summary>Full path of the directory.</summary>
    public string Path { get; }

    /// <summary>A path inside the directory (nothing is created).</summary>
    public string Combine(params string[] parts) => System.IO.Path.Combine([Path, .. parts]);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (DirectoryNotFoundException)
        {
        }
        catch (IOException)
        {
            // A file may still be held by a process the test left running; don't hide
            // the test's own outcome behind a clean-up error.
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    public override string ToString() => Path;
}
