using System.Globalization;
using System.Text;

namespace Strata.Img.Cli;

/// <summary>
/// A JSON value as QEMU's QObject: dictionaries iterate in QEMU's QDict order (512 hash buckets by tdb_hash,
/// the latest insertion first within a bucket), so output keys come out in exactly qemu-img's order.
/// </summary>
public abstract class QObject
{
    public static implicit operator QObject(string s) => new QString(s);
    public static implicit operator QObject(long v) => new QNum(v);
    public static implicit operator QObject(bool b) => new QBool(b);
}

public sealed class QString(string value) : QObject
{
    public string Value { get; } = value;
}

public sealed class QNum(long value) : QObject
{
    public long Value { get; } = value;
}

public sealed class QBool(bool value) : QObject
{
    public bool Value { get; } = value;
}

public sealed class QList : QObject
{
    public List<QObject> Items { get; } = [];
    public QList Add(QObject o)
    {
        Items.Add(o);
        return this;
    }
}

public sealed class QDict : QObject
{
    private const int Buckets = 512;
    private readonly List<(string Key, QObject Value, int Seq)> _entries = [];
    private int _seq;

    /// <summary>Adds (or replaces) a key; insertion order only matters within a hash bucket.</summary>
    public QDict Put(string key, QObject value)
    {
        int i = _entries.FindIndex(e => e.Key == key);
        if (i >= 0)
            _entries[i] = (key, value, _entries[i].Seq);
        else
            _entries.Add((key, value, _seq++));
        return this;
    }

    public QObject? Get(string key) => _entries.FirstOrDefault(e => e.Key == key).Value;

    /// <summary>Entries in QEMU's iteration order.</summary>
    public IEnumerable<KeyValuePair<string, QObject>> Entries =>
        _entries.OrderBy(e => Hash(e.Key) % Buckets).ThenByDescending(e => e.Seq)
            .Select(e => new KeyValuePair<string, QObject>(e.Key, e.Value));

    /// <summary>QEMU's tdb_hash.</summary>
    public static uint Hash(string name)
    {
        var bytes = Encoding.UTF8.GetBytes(name);
        uint value = unchecked(0x238F13AFu * (uint)bytes.Length);
        for (int i = 0; i < bytes.Length; i++)
            value = unchecked(value + ((uint)bytes[i] << (i * 5 % 24)));
        return unchecked(1103515243u * value + 12345u);
    }
}

/// <summary>QEMU's JSON writer (qobject_to_json_pretty) and qemu-img's human dump of format-specific data.</summary>
public static class QJson
{
    public static string ToPrettyJson(QObject o)
    {
        var sb = new StringBuilder();
        Write(sb, o, 0);
        return sb.ToString();
    }

    private static void Newline(StringBuilder sb, int depth) => sb.Append('\n').Append(' ', 4 * depth);

    private static void Write(StringBuilder sb, QObject o, int depth)
    {
        switch (o)
        {
            case QDict d:
            {
                sb.Append('{');
                bool first = true;
                foreach (var kv in d.Entries)
                {
                    if (!first)
                        sb.Append(',');
                    first = false;
                    Newline(sb, depth + 1);
                    Quote(sb, kv.Key);
                    sb.Append(": ");
                    Write(sb, kv.Value, depth + 1);
                }
                Newline(sb, depth);
                sb.Append('}');
                break;
            }
            case QList l:
            {
                sb.Append('[');
                bool first = true;
                foreach (var item in l.Items)
                {
                    if (!first)
                        sb.Append(',');
                    first = false;
                    Newline(sb, depth + 1);
                    Write(sb, item, depth + 1);
                }
                Newline(sb, depth);
                sb.Append(']');
                break;
            }
            case QString s:
                Quote(sb, s.Value);
                break;
            case QNum n:
                sb.Append(n.Value.ToString(CultureInfo.InvariantCulture));
                break;
            case QBool b:
                sb.Append(b.Value ? "true" : "false");
                break;
        }
    }

    /// <summary>QEMU's quoted_str: ASCII printable as is, the rest as \uXXXX (upper-case hex, surrogate pairs).</summary>
    public static void Quote(StringBuilder sb, string s)
    {
        sb.Append('"');
        foreach (var r in s.EnumerateRunes())
        {
            int cp = r.Value;
            switch (cp)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                default:
                    if (cp > 0xFFFF)
                        sb.Append(CultureInfo.InvariantCulture, $"\\u{0xD800 + ((cp - 0x10000) >> 10):X4}\\u{0xDC00 + ((cp - 0x10000) & 0x3FF):X4}");
                    else if (cp < 0x20 || cp >= 0x7F)
                        sb.Append(CultureInfo.InvariantCulture, $"\\u{cp:X4}");
                    else
                        sb.Append((char)cp);
                    break;
            }
        }
        sb.Append('"');
    }

    /// <summary>qemu's dump_qobject (block/qapi.c), used for "Format specific information".</summary>
    public static void DumpHuman(StringBuilder sb, int indentation, QObject o)
    {
        switch (o)
        {
            case QDict d:
                DumpDict(sb, indentation, d);
                break;
            case QList l:
                DumpList(sb, indentation, l);
                break;
            case QString s:
                sb.Append(s.Value).Append('\n');
                break;
            case QNum n:
                sb.Append(n.Value.ToString(CultureInfo.InvariantCulture)).Append('\n');
                break;
            case QBool b:
                sb.Append(b.Value ? "true" : "false").Append('\n');
                break;
        }
    }

    private static void DumpDict(StringBuilder sb, int indentation, QDict d)
    {
        foreach (var kv in d.Entries)
        {
            bool composite = kv.Value is QDict or QList;
            sb.Append(' ', indentation * 4).Append(kv.Key.Replace('-', ' ')).Append(':');
            sb.Append(composite ? '\n' : ' ');
            DumpHuman(sb, indentation + 1, kv.Value);
        }
    }

    private static void DumpList(StringBuilder sb, int indentation, QList l)
    {
        int i = 0;
        foreach (var item in l.Items)
        {
            bool composite = item is QDict or QList;
            sb.Append(' ', indentation * 4).Append(CultureInfo.InvariantCulture, $"[{i++}]:");
            sb.Append(composite ? '\n' : ' ');
            DumpHuman(sb, indentation + 1, item);
        }
    }
}
