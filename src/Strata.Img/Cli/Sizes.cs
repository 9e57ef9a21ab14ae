using System.Globalization;

namespace Strata.Img.Cli;

/// <summary>QEMU's size parsing (qemu_strtosz, qemu-img's cvtnum) and printing (size_to_str).</summary>
public static class Sizes
{
    public enum StrtoszError { None, Invalid, Range }

    private static long SuffixMul(char c, long unit) => char.ToUpperInvariant(c) switch
    {
        'B' => 1,
        'K' => unit,
        'M' => unit * unit,
        'G' => unit * unit * unit,
        'T' => unit * unit * unit * unit,
        'P' => unit * unit * unit * unit * unit,
        'E' => unit * unit * unit * unit * unit * unit,
        _ => -1,
    };

    /// <summary>qemu_strtosz (QEMU 7.2): decimal with optional fraction and a k/M/G/T/P/E suffix (binary units); hex allowed.</summary>
    /// <param name="warning">Set to a deprecation warning to print, if any.</param>
    public static StrtoszError Strtosz(string s, out ulong result, out string? warning)
    {
        result = 0;
        warning = null;
        int p = 0;
        // strtoull: leading white space and a sign are accepted by the C library...
        while (p < s.Length && (s[p] == ' ' || (s[p] >= '\t' && s[p] <= '\r')))
            p++;
        int signPos = p;
        if (p < s.Length && (s[p] == '+' || s[p] == '-'))
            p++;
        int digitsStart = p;
        while (p < s.Length && char.IsAsciiDigit(s[p]))
            p++;
        if (p == digitsStart)
            return StrtoszError.Invalid;
        // ...but QEMU rejects a minus sign.
        if (s[signPos] == '-')
            return StrtoszError.Invalid;
        UInt128 big = 0;
        bool overflow = false;
        for (int i = digitsStart; i < p; i++)
        {
            big = big * 10 + (uint)(s[i] - '0');
            if (big > ulong.MaxValue)
                overflow = true;
        }
        if (overflow)
            return StrtoszError.Range;
        ulong val = (ulong)big;
        ulong valf = 0;
        bool hex = false;
        if (val == 0 && p < s.Length && (s[p] == 'x' || s[p] == 'X') && p == digitsStart + 1)
        {
            int h = p + 1, hs = h;
            big = 0;
            while (h < s.Length && char.IsAsciiHexDigit(s[h]))
            {
                big = big * 16 + (uint)Convert.ToInt32(s[h].ToString(), 16);
                if (big > ulong.MaxValue)
                    overflow = true;
                h++;
            }
            if (h == hs)
            {
                // "0x" with no digits: strtoull parses the "0" only.
            }
            else
            {
                if (overflow)
                    return StrtoszError.Range;
                val = (ulong)big;
                p = h;
                hex = true;
                if (p < s.Length && s[p] == '.')
                    return StrtoszError.Invalid;
            }
        }
        else if (p < s.Length && s[p] == '.')
        {
            // strtod on ".ddd": digits only (an exponent makes the whole input invalid).
            int f = p + 1;
            while (f < s.Length && char.IsAsciiDigit(s[f]))
                f++;
            if (f == p + 1)
            {
                p++; // "1.k": no fraction digits
            }
            else
            {
                int end = f;
                if (end < s.Length && (s[end] == 'e' || s[end] == 'E'))
                {
                    int e = end + 1;
                    if (e < s.Length && (s[e] == '+' || s[e] == '-'))
                        e++;
                    if (e < s.Length && char.IsAsciiDigit(s[e]))
                        return StrtoszError.Invalid;
                }
                double fraction = double.Parse("0" + s[p..f], CultureInfo.InvariantCulture);
                double scaled = fraction * 18446744073709551616.0;
                valf = scaled >= 18446744073709551616.0 ? 0 : (ulong)scaled;
                p = f;
            }
        }
        long mul = p < s.Length ? SuffixMul(s[p], 1024) : -1;
        if (mul > 0)
        {
            if (hex)
                warning = $"Using a multiplier suffix on hex numbers is deprecated: {s}";
            p++;
        }
        else
            mul = 1;
        if (p != s.Length)
            return StrtoszError.Invalid;
        if (mul == 1)
        {
            if (valf != 0)
                return StrtoszError.Invalid;
            result = val;
            return StrtoszError.None;
        }
        UInt128 whole = (UInt128)val * (ulong)mul;
        UInt128 frac = (UInt128)valf * (ulong)mul; // 64.64 fixed point
        UInt128 total = whole + (frac >> 64) + ((frac >> 63) & 1);
        if (total > ulong.MaxValue)
            return StrtoszError.Range;
        result = (ulong)total;
        return StrtoszError.None;
    }

    /// <summary>qemu-img's cvtnum_full: prints QEMU's messages and throws on error.</summary>
    public static long CvtNum(string name, string value, long min = 0, long max = long.MaxValue)
    {
        var err = Strtosz(value, out ulong res, out string? warning);
        if (warning != null)
            Io.Warn(warning);
        if (err == StrtoszError.Invalid)
        {
            Io.Error($"Invalid {name} specified. You may use k, M, G, T, P or E suffixes for");
            Io.Error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
            throw new ExitException(1);
        }
        if (err == StrtoszError.Range || res > (ulong)max || res < (ulong)min)
        {
            Io.Error($"Invalid {name} specified. Must be between {min} and {max}.");
            throw new ExitException(1);
        }
        return (long)res;
    }

    /// <summary>qemu_strtoi64-style plain decimal parse (whole string), for -c, -d and the like.</summary>
    public static bool TryParseInt(string s, out long v) =>
        long.TryParse(s, NumberStyles.AllowLeadingSign | NumberStyles.AllowLeadingWhite, CultureInfo.InvariantCulture, out v);

    private static readonly string[] Suffixes = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

    /// <summary>QEMU's size_to_str: "196 KiB", "1 GiB", "1.31 MiB".</summary>
    public static string SizeToStr(ulong val)
    {
        double d = val / (1000.0 / 1024.0);
        int i = d == 0 ? 0 : FrexpExponent(d);
        i = (i - 1) / 10; // C division truncates toward zero
        ulong div = 1UL << (i * 10);
        return $"{FormatG(val / (double)div, 3)} {Suffixes[i]}";
    }

    private static int FrexpExponent(double d)
    {
        // frexp: d = m * 2^e with 0.5 <= m < 1.
        int e = Math.ILogB(d) + 1;
        return e;
    }

    /// <summary>C's "%.{precision}g".</summary>
    public static string FormatG(double v, int precision)
    {
        if (v == 0)
            return "0";
        if (double.IsNaN(v))
            return "nan";
        if (double.IsInfinity(v))
            return v > 0 ? "inf" : "-inf";
        string e = v.ToString("E" + (precision - 1), CultureInfo.InvariantCulture); // d.ddE+xxx
        int ePos = e.IndexOf('E');
        int exp = int.Parse(e[(ePos + 1)..], CultureInfo.InvariantCulture);
        if (exp < -4 || exp >= precision)
        {
            string mant = e[..ePos];
            if (mant.Contains('.'))
                mant = mant.TrimEnd('0').TrimEnd('.');
            return $"{mant}e{(exp < 0 ? '-' : '+')}{Math.Abs(exp):00}";
        }
        string f = v.ToString("F" + Math.Max(0, precision - 1 - exp), CultureInfo.InvariantCulture);
        if (f.Contains('.'))
            f = f.TrimEnd('0').TrimEnd('.');
        return f;
    }

    /// <summary>C's "%0.2f".</summary>
    public static string F2(double v) => v.ToString("F2", CultureInfo.InvariantCulture);

    public static long RoundUp(long v, long align) => (v + align - 1) / align * align;
}
