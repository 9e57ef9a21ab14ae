using System.Buffers;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace Strata.Qmp.Json;

/// <summary>
/// QEMU's recursive-descent JSON parser (qobject/json-parser.c) over one message's tokens.
/// Produces the value as standard JSON text (for <see cref="JsonDocument"/>) or QEMU's error
/// message; the first error found wins, as in QEMU.
/// </summary>
internal sealed class QemuJsonParser
{
    private readonly List<QemuToken> _tokens;
    private readonly byte[] _text;
    private int _pos;
    private string? _error;

    private QemuJsonParser(List<QemuToken> tokens, byte[] text)
    {
        _tokens = tokens;
        _text = text;
    }

    /// <summary>Parses the tokens of one message into JSON text, or returns QEMU's error.</summary>
    public static (byte[] Json, string? Error) Parse(List<QemuToken> tokens, byte[] text, int maxDepth)
    {
        var parser = new QemuJsonParser(tokens, text);
        var value = parser.ParseValue();
        if (parser._error is not null || value is null)
        {
            return ([], parser._error ?? "JSON parse error, expecting value");
        }

        var buffer = new ArrayBufferWriter<byte>(256);
        using (var writer = new Utf8JsonWriter(buffer, new JsonWriterOptions
        {
            Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
            MaxDepth = maxDepth + 2,
            SkipValidation = true,
        }))
        {
            value.Write(writer);
        }

        return (buffer.WrittenSpan.ToArray(), null);
    }

    private void Fail(string message) => _error ??= "JSON parse error, " + message;

    private QemuToken? Peek() => _pos < _tokens.Count ? _tokens[_pos] : null;

    private QemuToken? Pop() => _pos < _tokens.Count ? _tokens[_pos++] : null;

    private ReadOnlySpan<byte> TextOf(QemuToken token) => _text.AsSpan(token.Start, token.Length);

    private Node? ParseValue()
    {
        if (Peek() is not { } token)
        {
            Fail("premature EOI");
            return null;
        }

        switch (token.Type)
        {
            case QemuTokenType.LCurly:
                return ParseObject();
            case QemuTokenType.LSquare:
                return ParseArray();
            case QemuTokenType.Integer:
            case QemuTokenType.Float:
                _pos++;
                return new NumberNode(TextOf(token).ToArray());
            case QemuTokenType.String:
                _pos++;
                return ParseString(TextOf(token)) is { } s ? new StringNode(s) : null;
            case QemuTokenType.Keyword:
                _pos++;
                var word = Encoding.ASCII.GetString(TextOf(token));
                switch (word)
                {
                    case "true":
                        return new LiteralNode(JsonValueKind.True);
                    case "false":
                        return new LiteralNode(JsonValueKind.False);
                    case "null":
                        return new LiteralNode(JsonValueKind.Null);
                    default:
                        Fail($"invalid keyword '{word}'");
                        return null;
                }

            default:
                Fail("expecting value");
                return null;
        }
    }

    private ObjectNode? ParseObject()
    {
        _pos++; // '{'
        var node = new ObjectNode();
        if (Peek() is not { } peek)
        {
            Fail("premature EOI");
            return null;
        }

        if (peek.Type == QemuTokenType.RCurly)
        {
            _pos++;
            return node;
        }

        if (!ParsePair(node))
        {
            return null;
        }

        while (true)
        {
            if (Pop() is not { } token)
            {
                Fail("premature EOI");
                return null;
            }

            if (token.Type == QemuTokenType.RCurly)
            {
                return node;
            }

            if (token.Type != QemuTokenType.Comma)
            {
                Fail("expected separator in dict");
                return null;
            }

            if (!ParsePair(node))
            {
                return null;
            }
        }
    }

    private bool ParsePair(ObjectNode node)
    {
        if (Peek() is null)
        {
            Fail("premature EOI");
            return false;
        }

        if (ParseValue() is not StringNode key)
        {
            Fail("key is not a string in object");
            return false;
        }

        if (Pop() is not { } colon)
        {
            Fail("premature EOI");
            return false;
        }

        if (colon.Type != QemuTokenType.Colon)
        {
            Fail("missing : in object pair");
            return false;
        }

        if (ParseValue() is not { } value)
        {
            Fail("Missing value in dict");
            return false;
        }

        if (!node.Keys.Add(key.Value))
        {
            Fail("duplicate key");
            return false;
        }

        node.Members.Add(new KeyValuePair<string, Node>(key.Value, value));
        return true;
    }

    private ArrayNode? ParseArray()
    {
        _pos++; // '['
        var node = new ArrayNode();
        if (Peek() is not { } peek)
        {
            Fail("premature EOI");
            return null;
        }

        if (peek.Type == QemuTokenType.RSquare)
        {
            _pos++;
            return node;
        }

        while (true)
        {
            if (ParseValue() is not { } item)
            {
                Fail("expecting value");
                return null;
            }

            node.Items.Add(item);
            if (Pop() is not { } token)
            {
                Fail("premature EOI");
                return null;
            }

            if (token.Type == QemuTokenType.RSquare)
            {
                return node;
            }

            if (token.Type != QemuTokenType.Comma)
            {
                Fail("expected separator in list");
                return null;
            }
        }
    }

    /// <summary>QEMU's parse_string: escapes, surrogate pairs, modified UTF-8, validity of code points.</summary>
    private string? ParseString(ReadOnlySpan<byte> token)
    {
        var quote = token[0];
        var sb = new StringBuilder(token.Length);
        var p = 1;
        while (At(token, p) != quote)
        {
            if (At(token, p) == '\\')
            {
                var beg = p++;
                switch ((char)At(token, p++))
                {
                    case '"':
                        sb.Append('"');
                        break;
                    case '\'':
                        sb.Append('\'');
                        break;
                    case '\\':
                        sb.Append('\\');
                        break;
                    case '/':
                        sb.Append('/');
                        break;
                    case 'b':
                        sb.Append('\b');
                        break;
                    case 'f':
                        sb.Append('\f');
                        break;
                    case 'n':
                        sb.Append('\n');
                        break;
                    case 'r':
                        sb.Append('\r');
                        break;
                    case 't':
                        sb.Append('\t');
                        break;
                    case 'u':
                        var cp = Hex4(token, p);
                        p += 4;
                        if (cp is >= 0xD800 and <= 0xDBFF && At(token, p) == '\\' && At(token, p + 1) == 'u')
                        {
                            cp = 0x10000 + ((cp & 0x3FF) << 10);
                            var trailing = Hex4(token, p + 2);
                            if (trailing is >= 0xDC00 and <= 0xDFFF)
                            {
                                cp |= trailing & 0x3FF;
                                p += 6;
                            }
                            else
                            {
                                cp = -1;
                            }
                        }

                        if (!ModifiedUtf8.IsValidCodepoint(cp))
                        {
                            var end = Math.Min(p, token.Length);
                            Fail($"{ModifiedUtf8.DecodeLossy(token[beg..end])} is not a valid Unicode character");
                            return null;
                        }

                        ModifiedUtf8.AppendCodepoint(sb, cp);
                        break;
                    default:
                        Fail("invalid escape sequence in string");
                        return null;
                }
            }
            else
            {
                var cp = ModifiedUtf8.DecodeCodepoint(token[p..], out var consumed);
                if (cp < 0)
                {
                    Fail("invalid UTF-8 sequence in string");
                    return null;
                }

                p += consumed;
                ModifiedUtf8.AppendCodepoint(sb, cp);
            }
        }

        return sb.ToString();
    }

    private static byte At(ReadOnlySpan<byte> s, int i) => i < s.Length ? s[i] : (byte)0;

    private static int Hex4(ReadOnlySpan<byte> s, int at)
    {
        var cp = 0;
        for (var i = 0; i < 4; i++)
        {
            var c = at + i < s.Length ? s[at + i] : 0;
            int digit = c switch
            {
                >= (byte)'0' and <= (byte)'9' => c - '0',
                >= (byte)'a' and <= (byte)'f' => c - 'a' + 10,
                >= (byte)'A' and <= (byte)'F' => c - 'A' + 10,
                _ => -1,
            };
            if (digit < 0)
            {
                return -1;
            }

            cp = (cp << 4) | digit;
        }

        return cp;
    }

    private abstract class Node
    {
        public abstract void Write(Utf8JsonWriter writer);
    }

    private sealed class StringNode(string value) : Node
    {
        public string Value { get; } = value;

        public override void Write(Utf8JsonWriter writer) => writer.WriteStringValue(Value);
    }

    private sealed class NumberNode(byte[] raw) : Node
    {
        public override void Write(Utf8JsonWriter writer) => writer.WriteRawValue(raw, skipInputValidation: true);
    }

    private sealed class LiteralNode(JsonValueKind kind) : Node
    {
        public override void Write(Utf8JsonWriter writer)
        {
            switch (kind)
            {
                case JsonValueKind.True:
                    writer.WriteBooleanValue(true);
                    break;
                case JsonValueKind.False:
                    writer.WriteBooleanValue(false);
                    break;
                default:
                    writer.WriteNullValue();
                    break;
            }
        }
    }

    private sealed class ArrayNode : Node
    {
        public List<Node> Items { get; } = [];

        public override void Write(Utf8JsonWriter writer)
        {
            writer.WriteStartArray();
            foreach (var item in Items)
            {
                item.Write(writer);
            }

            writer.WriteEndArray();
        }
    }

    private sealed class ObjectNode : Node
    {
        public HashSet<string> Keys { get; } = new(StringComparer.Ordinal);

        public List<KeyValuePair<string, Node>> Members { get; } = [];

        public override void Write(Utf8JsonWriter writer)
        {
            writer.WriteStartObject();
            foreach (var (key, value) in Members)
            {
                writer.WritePropertyName(key);
                value.Write(writer);
            }

            writer.WriteEndObject();
        }
    }
}
