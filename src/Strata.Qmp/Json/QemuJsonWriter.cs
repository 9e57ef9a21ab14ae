using System.Buffers;
using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Strata.Qmp.Json;

/// <summary>
/// Prints JSON exactly as QEMU does (qobject/qjson.c, compact mode): <c>{"a": 1, "b": [1, 2]}</c>
/// with a space after each colon and comma, object members in QDict order (<see cref="QDictOrder"/>),
/// numbers re-printed as QEMU's QNum does (<see cref="CNumberFormat"/>), and strings escaped
/// as QEMU's to_json_str: only ASCII 0x20..0x7E is printed as is, everything else as
/// <c>\uXXXX</c> (uppercase hex, surrogate pairs above the BMP), with the short escapes
/// <c>\" \\ \b \f \n \r \t</c>; <c>/</c> is not escaped.
/// </summary>
public static class QemuJsonWriter
{
    /// <summary>The QEMU text of a value (ASCII only).</summary>
    public static string ToJson(JsonElement value)
    {
        var sb = new StringBuilder(256);
        Append(sb, value);
        return sb.ToString();
    }

    /// <summary>The QEMU text of a value, as bytes.</summary>
    public static byte[] ToUtf8Bytes(JsonElement value) => Encoding.ASCII.GetBytes(ToJson(value));

    /// <summary>Writes the QEMU text of a value.</summary>
    public static void Write(IBufferWriter<byte> output, JsonElement value)
    {
        var text = ToJson(value);
        var span = output.GetSpan(text.Length);
        var written = Encoding.ASCII.GetBytes(text, span);
        output.Advance(written);
    }

    /// <summary>Appends the QEMU text of a value.</summary>
    public static void Append(StringBuilder sb, JsonElement value)
    {
        switch (value.ValueKind)
        {
            case JsonValueKind.Object:
                var names = new List<string>();
                var values = new List<JsonElement>();
                foreach (var p in value.EnumerateObject())
                {
                    names.Add(p.Name);
                    values.Add(p.Value);
                }

                sb.Append('{');
                var first = true;
                foreach (var i in QDictOrder.Order(names))
                {
                    if (!first)
                    {
                        sb.Append(", ");
                    }

                    first = false;
                    AppendString(sb, names[i]);
                    sb.Append(": ");
                    Append(sb, values[i]);
                }

                sb.Append('}');
                break;
            case JsonValueKind.Array:
                sb.Append('[');
                var firstItem = true;
                foreach (var item in value.EnumerateArray())
                {
                    if (!firstItem)
                    {
                        sb.Append(", ");
                    }

                    firstItem = false;
                    Append(sb, item);
                }

                sb.Append(']');
                break;
            case JsonValueKind.String:
                AppendString(sb, value.GetString()!);
                break;
            case JsonValueKind.Number:
                sb.Append(CNumberFormat.FormatNumberToken(value.GetRawText()));
                break;
            case JsonValueKind.True:
                sb.Append("true");
                break;
            case JsonValueKind.False:
                sb.Append("false");
                break;
            case JsonValueKind.Null:
                sb.Append("null");
                break;
            default:
                throw new ArgumentException($"cannot print a JSON value of kind {value.ValueKind}", nameof(value));
        }
    }

    /// <summary>Appends a string literal escaped as QEMU's to_json_str does.</summary>
    public static void AppendString(StringBuilder sb, string s)
    {
        sb.Append('"');
        for (var i = 0; i < s.Length; i++)
        {
            int cp = s[i];
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
            {
                cp = char.ConvertToUtf32(s[i], s[i + 1]);
                i++;
            }

            switch (cp)
            {
                case '"':
                    sb.Append("\\\"");
                    break;
                case '\\':
                    sb.Append("\\\\");
                    break;
                case '\b':
                    sb.Append("\\b");
                    break;
                case '\f':
                    sb.Append("\\f");
                    break;
                case '\n':
                    sb.Append("\\n");
                    break;
                case '\r':
                    sb.Append("\\r");
                    break;
                case '\t':
                    sb.Append("\\t");
                    break;
                default:
                    if (!ModifiedUtf8.IsValidCodepoint(cp))
                    {
                        cp = 0xFFFD; // QEMU cannot decode it either
                    }

                    if (cp > 0xFFFF)
                    {
                        AppendU(sb, 0xD800 + ((cp - 0x10000) >> 10));
                        AppendU(sb, 0xDC00 + ((cp - 0x10000) & 0x3FF));
                    }
                    else if (cp < 0x20 || cp >= 0x7F)
                    {
                        AppendU(sb, cp);
                    }
                    else
                    {
                        sb.Append((char)cp);
                    }

                    break;
            }
        }

        sb.Append('"');
    }

    private static void AppendU(StringBuilder sb, int unit) =>
        sb.Append("\\u").Append(unit.ToString("X4", CultureInfo.InvariantCulture));
}
