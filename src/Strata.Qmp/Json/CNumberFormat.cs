using System.Globalization;
using System.Text;

namespace Strata.Qmp.Json;

/// <summary>How QEMU prints JSON numbers (qobject/qnum.c): integers in decimal, doubles with C's <c>%.17g</c>.</summary>
public static class CNumberFormat
{
    /// <summary>
    /// Formats a JSON number token as QEMU re-prints it: an integer that fits int64 (or, if not
    /// negative, uint64) as that integer, any other number as a double with <c>%.17g</c>
    /// (so <c>1.0</c> prints as <c>1</c>, <c>0.1</c> as <c>0.10000000000000001</c>, <c>1e400</c> as <c>inf</c>).
    /// </summary>
    public static string FormatNumberToken(string token)
    {
        var isInteger = token.AsSpan().IndexOfAny(".eE") < 0;
        if (isInteger)
        {
            if (long.TryParse(token, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var l))
            {
                return l.ToString(CultureInfo.InvariantCulture);
            }

            if (token[0] != '-' && ulong.TryParse(token, NumberStyles.None, CultureInfo.InvariantCulture, out var u))
            {
                return u.ToString(CultureInfo.InvariantCulture);
            }
        }

        return FormatG17(double.Parse(token, NumberStyles.Float, CultureInfo.InvariantCulture));
    }

    /// <summary>C's <c>printf("%.17g", d)</c> as glibc prints it.</summary>
    public static string FormatG17(double d) => FormatG(d, 17);

    /// <summary>C's <c>printf("%.{precision}g", d)</c>.</summary>
    public static string FormatG(double d, int precision)
    {
        if (double.IsNaN(d))
        {
            return double.IsNegative(d) ? "-nan" : "nan";
        }

        if (double.IsInfinity(d))
        {
            return d < 0 ? "-inf" : "inf";
        }

        precision = Math.Max(precision, 1);
        var negative = double.IsNegative(d);
        if (d == 0)
        {
            return negative ? "-0" : "0";
        }

        // "d.ddddE+xxx" with exactly `precision` significant digits, correctly rounded.
        var e = Math.Abs(d).ToString("E" + (precision - 1).ToString(CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);
        var ePos = e.IndexOf('E', StringComparison.Ordinal);
        var digits = e[..ePos].Replace(".", "", StringComparison.Ordinal);
        var exponent = int.Parse(e.AsSpan(ePos + 1), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture);

        var sb = new StringBuilder(32);
        if (negative)
        {
            sb.Append('-');
        }

        if (exponent < -4 || exponent >= precision)
        {
            var mantissa = digits.TrimEnd('0');
            sb.Append(mantissa[0]);
            if (mantissa.Length > 1)
            {
                sb.Append('.').Append(mantissa, 1, mantissa.Length - 1);
            }

            sb.Append('e').Append(exponent < 0 ? '-' : '+');
            var abs = Math.Abs(exponent);
            if (abs < 10)
            {
                sb.Append('0');
            }

            sb.Append(abs.ToString(CultureInfo.InvariantCulture));
        }
        else if (exponent >= 0)
        {
            var intPart = digits[..(exponent + 1)];
            var frac = digits[(exponent + 1)..].TrimEnd('0');
            sb.Append(intPart);
            if (frac.Length > 0)
            {
                sb.Append('.').Append(frac);
            }
        }
        else
        {
            var frac = (new string('0', -exponent - 1) + digits).TrimEnd('0');
            sb.Append("0.").Append(frac);
        }

        return sb.ToString();
    }
}
