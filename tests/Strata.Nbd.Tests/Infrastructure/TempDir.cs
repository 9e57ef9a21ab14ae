namespace Strata.Nbd.Tests.Infrastructure;

/// <summary>
/// A unique scratch directory under /var/tmp/strata-tests (not /tmp: it may be tmpfs), deleted on dispose.
/// STRATA_TEST_TMPDIR overrides the root. Short names keep unix socket paths under 108 bytes.
/// </summary>
public sealed class TempDir : IDisposable
{
    public static string Root =>
        Environment.GetEnvironmentVariable("STRATA_TEST_TMPDIR") is { Length: > 0 } root ? root : "/var/tmp/strata-tests";

    public TempDir(string prefix = "nbd")
    {
        Directory.CreateDirectory(Root);
        Path = System.IO.Path.Combine(Root, $"{prefix}-{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..12]}");
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

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
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    public override string ToString() => Path;
}
