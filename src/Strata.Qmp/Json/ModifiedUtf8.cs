using System.Text;

namespace Strata.Qmp.Json;

/// <summary>
/// QEMU's "modified UTF-8" rules (util/unicode.c): the encoding QEMU's JSON parser accepts
/// and its JSON formatter emits. Differences from strict UTF-8: U+0000 is encoded as
/// <c>C0 80</c> (and that overlong form is accepted), and noncharacters (U+FDD0..U+FDEF,
/// U+xFFFE, U+xFFFF) are invalid.
/// </summary>
public static class ModifiedUtf8
{
    private static readonly int[] MinCodepoint = [0x80, 0x800, 0x10000, 0x200000, 0x4000000];

    /// <summary>QEMU's <c>is_valid_codepoint</c>: a Unicode scalar value that is not a noncharacter.</summary>
    public static bool IsValidCodepoint(int cp)
    {
        if (cp < 0 || cp > 0x10FFFF)
        {
            return false;
        }

        if ((cp & 0xFFFE) == 0xFFFE || (cp >= 0xFDD0 && cp <= 0xFDEF))
        {
            return false; // noncharacter
        }

        return cp < 0xD800 || cp > 0xDFFF; // surrogates
    }

    /// <summary>
    /// QEMU's <c>mod_utf8_codepoint</c>: decodes the code point at the start of
    /// <paramref name="s"/>; bytes past the end read as NUL. Returns -1 for an invalid
    /// sequence (and for an empty input or a NUL byte, which consume nothing).
    /// <paramref name="consumed"/> is how many bytes QEMU skips.
    /// </summary>
    public static int DecodeCodepoint(ReadOnlySpan<byte> s, out int consumed)
    {
        if (s.IsEmpty || s[0] == 0)
        {
            consumed = 0;
            return -1;
        }

        int b = s[0];
        consumed = 1;
        if (b < 0x80)
        {
            return b;
        }

        if (b >= 0xFE || (b & 0x40) == 0)
        {
            return -1; // impossible byte, or unexpected continuation byte
        }

        var len = 0;
        var mask = 0x80;
        for (; (b & mask) != 0; mask >>= 1)
        {
            len++;
        }

        var cp = b & (mask - 1);
        for (var i = 1; i < len; i++)
        {
            var c = i < s.Length ? s[i] : 0;
            if ((c & 0xC0) != 0x80)
            {
                return -1; // continuation byte missing
            }

            consumed++;
            cp = (cp << 6) | (c & 0x3F);
        }

        if (!IsValidCodepoint(cp))
        {
            return -1;
        }

        if (cp < MinCodepoint[len - 2] && !(cp == 0 && len == 2))
        {
            return -1; // overlong, other than C0 80
        }

        return cp;
    }

    /// <summary>
    /// Decodes bytes as QEMU would print them: up to the first NUL (C string), each invalid
    /// sequence as U+FFFD.
    /// </summary>
    public static string DecodeLossy(ReadOnlySpan<byte> bytes)
    {
        var nul = bytes.IndexOf((byte)0);
        if (nul >= 0)
        {
            bytes = bytes[..nul];
        }

        var sb = new StringBuilder(bytes.Length);
        while (!bytes.IsEmpty)
        {
            var cp = DecodeCodepoint(bytes, out var consumed);
            AppendCodepoint(sb, cp < 0 ? 0xFFFD : cp);
            bytes = bytes[Math.Max(consumed, 1)..];
        }

        return sb.ToString();
    }

    internal static void AppendCodepoint(StringBuilder sb, int cp)
    {
        if (cp < 0x10000)
        {
            sb.Append((char)cp);
        }
        else
        {
            cp -= 0x10000;
            sb.Append((char)(0xD800 + (cp >> 10)));
            sb.Append((char)(0xDC00 + (cp & 0x3FF)));
        }
    }
}
