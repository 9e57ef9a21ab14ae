namespace Strata.Img.Cli;

public enum ArgKind { None, Required, Optional }

/// <summary>A long option: <c>--name</c> maps to <see cref="Id"/> (a short option letter or a private id).</summary>
public sealed record LongOption(string Name, ArgKind Arg, int Id);

/// <summary>One parsed option in command-line order.</summary>
public readonly record struct ParsedOption(int Id, string? Value, string Text);

/// <summary>
/// GNU getopt_long as qemu-img uses it (option string starting with ':'): arguments are permuted so options
/// may follow file names, "--" ends options, short options bundle ("-qU", "-fqcow2"), long options take
/// "--name=value" or "--name value" and may be abbreviated to a unique prefix.
/// Unknown options and missing arguments end the program with qemu-img's messages.
/// </summary>
public static class GetOpt
{
    public static (List<ParsedOption> Options, List<string> Positional) Parse(
        IReadOnlyList<string> args, string shortOpts, IReadOnlyList<LongOption> longOpts, bool stopAtFirstPositional = false,
        string? gnuName = null)
    {
        // Commands whose option string lacks the leading ':' (measure, compare, convert, resize, bench) let getopt print
        // its own message, then show the help.
        ExitException Unrecognized(string a, char c)
        {
            if (gnuName == null)
                return Io.UnrecognizedOption(a);
            Io.ErrorRaw(a.StartsWith("--", StringComparison.Ordinal)
                ? $"{gnuName}: unrecognized option '{a.Split('=')[0]}'\n"
                : $"{gnuName}: invalid option -- '{c}'\n");
            Help.Show();
            return new ExitException(0);
        }
        ExitException Missing(string a, char c)
        {
            if (gnuName == null)
                return Io.MissingArgument(a);
            Io.ErrorRaw(a.StartsWith("--", StringComparison.Ordinal)
                ? $"{gnuName}: option '{a}' requires an argument\n"
                : $"{gnuName}: option requires an argument -- '{c}'\n");
            Help.Show();
            return new ExitException(0);
        }
        var opts = new List<ParsedOption>();
        var pos = new List<string>();
        for (int i = 0; i < args.Count; i++)
        {
            string a = args[i];
            if (a == "--")
            {
                for (i++; i < args.Count; i++)
                    pos.Add(args[i]);
                break;
            }
            if (a.Length < 2 || a[0] != '-')
            {
                if (stopAtFirstPositional)
                {
                    for (; i < args.Count; i++)
                        pos.Add(args[i]);
                    break;
                }
                pos.Add(a);
                continue;
            }
            if (a.StartsWith("--", StringComparison.Ordinal))
            {
                string body = a[2..];
                int eq = body.IndexOf('=');
                string name = eq >= 0 ? body[..eq] : body;
                LongOption? match = null;
                foreach (var lo in longOpts)
                    if (lo.Name == name) { match = lo; break; }
                if (match == null)
                {
                    var cands = longOpts.Where(lo => lo.Name.StartsWith(name, StringComparison.Ordinal)).ToList();
                    // Candidates that are all the same option (same id and argument kind) are not ambiguous.
                    if (cands.Count >= 1 && cands.All(c => c.Id == cands[0].Id && c.Arg == cands[0].Arg))
                        match = cands[0];
                }
                if (match == null)
                    throw Unrecognized(a, '-');
                string? value = null;
                if (match.Arg == ArgKind.None)
                {
                    if (eq >= 0)
                        throw Unrecognized(a, '-');
                }
                else if (eq >= 0)
                    value = body[(eq + 1)..];
                else if (match.Arg == ArgKind.Required)
                {
                    if (i + 1 >= args.Count)
                        throw Missing(a, '-');
                    value = args[++i];
                }
                opts.Add(new ParsedOption(match.Id, value, a));
                continue;
            }
            // Short option cluster.
            for (int j = 1; j < a.Length; j++)
            {
                char c = a[j];
                int k = c == ':' ? -1 : shortOpts.IndexOf(c, shortOpts.StartsWith(':') ? 1 : 0);
                if (k < 0)
                    throw Unrecognized(a, c);
                bool takesArg = k + 1 < shortOpts.Length && shortOpts[k + 1] == ':';
                if (!takesArg)
                {
                    opts.Add(new ParsedOption(c, null, a));
                    continue;
                }
                string val;
                if (j + 1 < a.Length)
                    val = a[(j + 1)..];
                else
                {
                    if (i + 1 >= args.Count)
                        throw Missing(a, c);
                    val = args[++i];
                }
                opts.Add(new ParsedOption(c, val, a));
                break;
            }
        }
        return (opts, pos);
    }
}
