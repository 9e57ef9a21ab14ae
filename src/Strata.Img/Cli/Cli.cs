using System.Text;

namespace Strata.Img.Cli;

/// <summary>Ends the program with an exit code (after the message, if any, was printed).</summary>
public sealed class ExitException(int code) : Exception($"exit {code}")
{
    public int Code { get; } = code;
}

/// <summary>Output and error conventions of qemu-img, with this program's name.</summary>
public static class Io
{
    public const string ProgramName = "strata-img";

    private static TextWriter? s_out;

    /// <summary>Buffered stdout ("\n" line ends); flushed before anything goes to stderr and at exit.</summary>
    public static TextWriter Out => s_out ??= CreateOut();

    private static StreamWriter CreateOut()
    {
        var w = new StreamWriter(Console.OpenStandardOutput(), new UTF8Encoding(false), 1 << 16) { AutoFlush = false, NewLine = "\n" };
        return w;
    }

    public static void Flush() => s_out?.Flush();

    /// <summary>qemu's error_report: "strata-img: message".</summary>
    public static void Error(string message)
    {
        Flush();
        Console.Error.Write($"{ProgramName}: {message}\n");
    }

    /// <summary>qemu's error_report_err: the message, then the error's hint (text with its own line ends), if any.</summary>
    public static void Error(string message, string? hint)
    {
        Error(message);
        if (hint != null)
            ErrorRaw(hint);
    }

    /// <summary>qemu's error_printf: raw text to stderr.</summary>
    public static void ErrorRaw(string text)
    {
        Flush();
        Console.Error.Write(text);
    }

    public static void Warn(string message) => Error($"warning: {message}");

    /// <summary>qemu-img's error_exit: the message, the --help hint, exit 1.</summary>
    public static ExitException ErrorExit(string message)
    {
        Error(message);
        Console.Error.Write($"Try '{ProgramName} --help' for more information\n");
        throw new ExitException(1);
    }

    /// <summary>error_report then exit 1.</summary>
    public static ExitException Fail(string message)
    {
        Error(message);
        throw new ExitException(1);
    }

    public static ExitException UnrecognizedOption(string option) => ErrorExit($"unrecognized option '{option}'");

    public static ExitException MissingArgument(string option) => ErrorExit($"missing argument for option '{option}'");

    /// <summary>qemu-img's qprintf: stdout unless quiet.</summary>
    public static void Print(bool quiet, string text)
    {
        if (!quiet)
            Out.Write(text);
    }

    /// <summary>Output format from --output (null = human).</summary>
    public static bool ParseOutputFormat(string? output)
    {
        if (output == null || output == "human")
            return false;
        if (output == "json")
            return true;
        throw Fail("--output must be used with human or json as argument.");
    }
}
