using System.Globalization;
using System.Text;

namespace Strata.Img.Cli;

public enum OptType { String, Bool, Number, Size }

public sealed record OptDesc(string Name, OptType Type, string Help, string? Default = null);

/// <summary>Thrown for -o parsing errors (the caller adds "filename: ").</summary>
public sealed class OptsException(string message, string? hint = null) : Exception(message)
{
    public string? Hint { get; } = hint;
}

/// <summary>Creation option lists of the formats and of the file protocol, as QEMU 7.2 orders them.</summary>
public static class OptLists
{
    /// <summary>QEMU's QCOW_COMMON_OPTIONS: the end of qcow2's creation list, and of its amend list.</summary>
    public static readonly OptDesc[] Qcow2Common =
    [
        new("size", OptType.Size, "Virtual disk size"),
        new("compat", OptType.String, "Compatibility level (v2 [0.10] or v3 [1.1])"),
        new("backing_file", OptType.String, "File name of a base image"),
        new("backing_fmt", OptType.String, "Image format of the base image"),
        new("data_file", OptType.String, "File name of an external data file"),
        new("data_file_raw", OptType.Bool, "The external data file must stay valid as a raw image"),
        new("lazy_refcounts", OptType.Bool, "Postpone refcount updates", "off"),
        new("refcount_bits", OptType.Number, "Width of a reference count entry in bits", "16"),
    ];

    public static readonly OptDesc[] Qcow2 =
    [
        new("encryption", OptType.Bool, "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)"),
        new("encrypt.format", OptType.String, "Encrypt the image, format choices: 'aes', 'luks'"),
        new("encrypt.key-secret", OptType.String, "ID of secret providing qcow AES key or LUKS passphrase"),
        new("encrypt.cipher-alg", OptType.String, "Name of encryption cipher algorithm"),
        new("encrypt.cipher-mode", OptType.String, "Name of encryption cipher mode"),
        new("encrypt.ivgen-alg", OptType.String, "Name of IV generator algorithm"),
        new("encrypt.ivgen-hash-alg", OptType.String, "Name of IV generator hash algorithm"),
        new("encrypt.hash-alg", OptType.String, "Name of encryption hash algorithm"),
        new("encrypt.iter-time", OptType.Number, "Time to spend in PBKDF in milliseconds"),
        new("cluster_size", OptType.Size, "qcow2 cluster size", "65536"),
        new("extended_l2", OptType.Bool, "Extended L2 tables", "off"),
        new("preallocation", OptType.String, "Preallocation mode (allowed values: off, metadata, falloc, full)"),
        new("compression_type", OptType.String, "Compression method used for image cluster compression", "zlib"),
        .. Qcow2Common,
    ];

    public static readonly OptDesc[] Raw =
    [
        new("size", OptType.Size, "Virtual disk size"),
    ];

    public static readonly OptDesc[] File =
    [
        new("size", OptType.Size, "Virtual disk size"),
        new("nocow", OptType.Bool, "Turn off copy-on-write (valid only on btrfs)"),
        new("preallocation", OptType.String, "Preallocation mode (allowed values: off, falloc, full)"),
        new("extent_size_hint", OptType.Size, "Extent size hint for the image file, 0 to disable"),
    ];

    public static OptDesc[]? ForFormat(string fmt) => fmt switch
    {
        "qcow2" => Qcow2,
        "raw" => Raw,
        _ => null,
    };

    /// <summary>qemu_opts_append: the format's options, then the protocol's ones not already present.</summary>
    public static OptDesc[] Append(OptDesc[] a, OptDesc[] b) =>
        [.. a, .. b.Where(d => !a.Any(x => x.Name == d.Name))];
}

/// <summary>A set of options (QemuOpts) over a descriptor list; later settings of a name win.</summary>
public sealed class QemuOpts(OptDesc[] descs)
{
    private readonly List<(string Name, string Str, ulong Num)> _opts = [];

    public OptDesc[] Descs { get; } = descs;

    public static bool IsHelpOption(string s) => s == "help" || s == "?";

    /// <summary>qemu-img's is_valid_option_list.</summary>
    public static bool IsValidOptionList(string s)
    {
        if (s.Length == 0 || s[0] == ',')
            return false;
        int i = s.Length;
        while (i > 0 && s[i - 1] == ',')
            i--;
        return (s.Length - i) % 2 == 0;
    }

    /// <summary>Splits "a=b,c,,d=e" into name/value pairs as QEMU's opts_do_parse (",," is a literal comma; "flag" = on, "noflag" = off).</summary>
    public static List<(string Name, string Value, bool IsHelp)> Split(string s)
    {
        var list = new List<(string, string, bool)>();
        int p = 0;
        while (p < s.Length)
        {
            int len = 0;
            while (p + len < s.Length && s[p + len] != '=' && s[p + len] != ',')
                len++;
            string name, value;
            bool help = false;
            if (p + len >= s.Length || s[p + len] != '=')
            {
                name = s.Substring(p, len);
                p += len;
                if (name.StartsWith("no", StringComparison.Ordinal))
                {
                    name = name[2..];
                    value = "off";
                }
                else
                {
                    value = "on";
                    help = IsHelpOption(name);
                }
            }
            else
            {
                name = s.Substring(p, len);
                p += len + 1;
                var sb = new StringBuilder();
                while (p < s.Length)
                {
                    if (s[p] == ',')
                    {
                        if (p + 1 < s.Length && s[p + 1] == ',')
                        {
                            sb.Append(',');
                            p += 2;
                            continue;
                        }
                        break;
                    }
                    sb.Append(s[p++]);
                }
                value = sb.ToString();
            }
            if (p < s.Length && s[p] == ',')
                p++;
            list.Add((name, value, help));
        }
        return list;
    }

    public static bool HasHelpOption(string? s) => s != null && Split(s).Any(o => o.IsHelp);

    /// <summary>qemu_opts_do_parse.</summary>
    public void Parse(string s)
    {
        foreach (var (name, value, _) in Split(s))
            Set(name, value);
    }

    public void Set(string name, string value)
    {
        var d = Descs.FirstOrDefault(x => x.Name == name) ?? throw new OptsException($"Invalid parameter '{name}'");
        ulong num = 0;
        switch (d.Type)
        {
            case OptType.Bool:
                if (!TryParseBool(value, out bool b))
                    throw new OptsException($"Parameter '{name}' expects 'on' or 'off'");
                num = b ? 1UL : 0;
                break;
            case OptType.Number:
                if (!TryParseU64(value, out num))
                    throw new OptsException($"Parameter '{name}' expects a number");
                break;
            case OptType.Size:
                var err = Sizes.Strtosz(value, out num, out string? warning);
                if (warning != null)
                    Io.Warn(warning);
                if (err == Sizes.StrtoszError.Range)
                    throw new OptsException($"Value '{value}' is out of range for parameter '{name}'");
                if (err != Sizes.StrtoszError.None)
                    throw new OptsException($"Parameter '{name}' expects a non-negative number below 2^64",
                        "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.\n");
                break;
        }
        _opts.Add((name, value, num));
    }

    public void SetNumber(string name, long value) => _opts.Add((name, value.ToString(CultureInfo.InvariantCulture), (ulong)value));

    public bool Has(string name) => _opts.Any(o => o.Name == name);

    public string? Get(string name)
    {
        for (int i = _opts.Count - 1; i >= 0; i--)
            if (_opts[i].Name == name)
                return _opts[i].Str;
        return null;
    }

    public ulong? GetNumber(string name)
    {
        for (int i = _opts.Count - 1; i >= 0; i--)
            if (_opts[i].Name == name)
                return _opts[i].Num;
        return null;
    }

    public bool GetBool(string name, bool def) => GetNumber(name) is { } v ? v != 0 : def;

    /// <summary>Removes every setting of a name (qemu_opt_unset / *_del).</summary>
    public void Remove(string name) => _opts.RemoveAll(o => o.Name == name);

    /// <summary>qemu_opts_print(opts, " "): set options and defaults in descriptor order; commas doubled.</summary>
    public string Print()
    {
        var sb = new StringBuilder();
        string sep = "";
        foreach (var d in Descs)
        {
            int idx = _opts.FindLastIndex(o => o.Name == d.Name);
            string? value = idx >= 0 ? _opts[idx].Str : d.Default;
            if (value == null)
                continue;
            sb.Append(sep).Append(d.Name).Append('=');
            if (d.Type == OptType.String)
                sb.Append(value.Replace(",", ",,", StringComparison.Ordinal));
            else if (d.Type is OptType.Size or OptType.Number && idx >= 0)
                sb.Append((long)_opts[idx].Num);
            else
                sb.Append(value);
            sep = " ";
        }
        return sb.ToString();
    }

    public static bool TryParseBool(string v, out bool b)
    {
        switch (v)
        {
            case "on" or "yes" or "true" or "y":
                b = true;
                return true;
            case "off" or "no" or "false" or "n":
                b = false;
                return true;
            default:
                b = false;
                return false;
        }
    }

    /// <summary>qemu_strtou64(value, NULL, 0): decimal, 0x hex or 0 octal, the whole string.</summary>
    public static bool TryParseU64(string v, out ulong r)
    {
        r = 0;
        string s = v.TrimStart(' ', '\t', '\n', '\v', '\f', '\r');
        bool neg = false;
        if (s.StartsWith('+') || s.StartsWith('-'))
        {
            neg = s[0] == '-';
            s = s[1..];
        }
        if (s.Length == 0)
            return false;
        try
        {
            if (s.Length > 2 && (s.StartsWith("0x", StringComparison.Ordinal) || s.StartsWith("0X", StringComparison.Ordinal)))
                r = ulong.Parse(s[2..], NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture);
            else if (s.Length > 1 && s[0] == '0')
                r = Convert.ToUInt64(s[1..], 8);
            else if (s.All(char.IsAsciiDigit))
                r = ulong.Parse(s, CultureInfo.InvariantCulture);
            else
                return false;
        }
        catch (Exception e) when (e is FormatException or OverflowException or ArgumentException)
        {
            return false;
        }
        if (neg)
            r = unchecked(0 - r);
        return true;
    }

    /// <summary>qemu_opts_print_help: sorted "  name=<type>  - help" lines.</summary>
    public static string HelpLines(IEnumerable<OptDesc> descs)
    {
        var lines = new List<string>();
        foreach (var d in descs)
        {
            string type = d.Type switch
            {
                OptType.String => "str",
                OptType.Bool => "bool (on/off)",
                OptType.Number => "num",
                _ => "size",
            };
            var s = $"  {d.Name}=<{type}>";
            if (s.Length < 24)
                s += new string(' ', 24 - s.Length);
            s += " - " + d.Help;
            lines.Add(s);
        }
        lines.Sort(StringComparer.Ordinal);
        return string.Concat(lines.Select(l => l + "\n"));
    }

    /// <summary>qemu-img's print_block_option_help.</summary>
    public static int PrintHelp(string? filename, string fmt)
    {
        var descs = OptLists.ForFormat(fmt);
        if (descs == null)
        {
            Io.Error($"Unknown file format '{fmt}'");
            return 1;
        }
        var o = Io.Out;
        if (filename != null)
        {
            o.Write("Supported options:\n");
            o.Write(HelpLines(OptLists.Append(descs, OptLists.File)));
        }
        else
        {
            o.Write($"Supported {fmt} options:\n");
            o.Write(HelpLines(descs));
            o.Write("\nThe protocol level may support further options.\nSpecify the target filename to include those options.\n");
        }
        return 0;
    }
}
