using System.Text;

namespace Strata.Testing;

/// <summary>What one run of an external tool produced.</summary>
public sealed record ProcessResult(
    string FileName,
    IReadOnlyList<string> Arguments,
    int ExitCode,
    string StdOut,
    string StdErr,
    TimeSpan Elapsed)
{
    public bool Succeeded => ExitCode == 0;

    /// <summary>The command line, roughly as a shell would show it.</summary>
    public string CommandLine =>
        string.Join(' ', new[] { FileName }.Concat(Arguments).Select(QuoteForDisplay));

    /// <summary>Throws (failing the test) unless the exit code is 0; returns this for chaining.</summary>
    public ProcessResult EnsureSuccess()
    {
        if (ExitCode != 0)
        {
            throw new ToolFailedException(this);
        }

        return this;
    }

    /// <summary>Throws unless the tool exited with <paramref name="expected"/>.</summary>
    public ProcessResult EnsureExitCode(int expected)
    {
        if (ExitCode != expected)
        {
            throw new ToolFailedException(this, $"expected exit code {expected}");
        }

        return this;
    }

    public override string ToString()
    {
        var sb = new StringBuilder();
        sb.Append("$ ").AppendLine(CommandLine);
        sb.Append("exit code ").Append(ExitCode).Append(" after ").Append(Elapsed.TotalSeconds.ToString("0.###")).AppendLine(" s");
        if (StdOut.Length > 0)
        {
            sb.AppendLine("--- stdout ---").AppendLine(Truncate(StdOut));
        }

        if (StdErr.Length > 0)
        {
            sb.AppendLine("--- stderr ---").AppendLine(Truncate(StdErr));
        }

        return sb.ToString();
    }

    private static string Truncate(string s) =>
        s.Length <= 8000 ? s.TrimEnd() : string.Concat(s.AsSpan(0, 8000), $"... ({s.Length - 8000} more chars)");

    private static string QuoteForDisplay(string arg) =>
        arg.Length > 0 && arg.All(c => char.IsAsciiLetterOrDigit(c) || "-_./=:,+@%".Contains(c))
            ? arg
            : "'" + arg.Replace("'", "'\\''") + "'";
}

/// <summary>An external tool exited with an unexpected status.</summary>
public sealed class ToolFailedException(ProcessResult result, string? why = null)
    : Exception($"{Path.GetFileName(result.FileName)} failed{(why is null ? "" : $" ({why})")}:{Environment.NewLine}{result}")
{
    public ProcessResult Result { get; } = result;
}

/// <summary>An external tool did not finish in time; it was killed.</summary>
public sealed class ToolTimeoutException(string message) : Exception(message);

/// <summary>
/// A tool the differential tests need is not installed. Tests must fail (never skip)
/// in that case: test.sh installs the tools.
/// </summary>
public sealed class MissingToolException(string message) : Exception(message);
