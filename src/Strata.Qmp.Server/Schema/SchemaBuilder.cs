using System.Buffers;
using System.Text.Json;

namespace Strata.Qmp.Server.Schema;

/// <summary>
/// Builds query-qmp-schema's reply (a list of SchemaInfo) from the command table's argument and return types, as
/// QEMU's qapi/introspect.py does: commands and events by name, builtins and arrays by their names, every other
/// type under a masked name (a number, in order of first use).
/// </summary>
public sealed class SchemaBuilder
{
    private readonly Dictionary<string, string> _masked = new(StringComparer.Ordinal);
    private readonly List<Action<Utf8JsonWriter>> _types = [];
    private readonly HashSet<string> _builtins = new(StringComparer.Ordinal);

    /// <summary>The schema of <paramref name="commands"/> and <paramref name="events"/>, as one JSON array.</summary>
    public static JsonElement Build(IEnumerable<QmpCommand> commands, IEnumerable<(string Name, QapiObject Data)> events)
    {
        var b = new SchemaBuilder();
        var entities = new List<Action<Utf8JsonWriter>>();
        foreach (var c in commands)
        {
            var arg = b.Use(c.Arguments);
            var ret = b.Use(c.Returns);
            entities.Add(w =>
            {
                w.WriteStartObject();
                w.WriteString("name", c.Name);
                w.WriteString("meta-type", "command");
                if (c.Features.Count > 0)
                {
                    WriteStrings(w, "features", c.Features);
                }

                w.WriteString("arg-type", arg);
                w.WriteString("ret-type", ret);
                if (c.AllowOob)
                {
                    w.WriteBoolean("allow-oob", true);
                }

                w.WriteEndObject();
            });
        }

        foreach (var (name, data) in events)
        {
            var arg = b.Use(data);
            entities.Add(w =>
            {
                w.WriteStartObject();
                w.WriteString("name", name);
                w.WriteString("meta-type", "event");
                w.WriteString("arg-type", arg);
                w.WriteEndObject();
            });
        }

        var buffer = new ArrayBufferWriter<byte>(64 * 1024);
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartArray();
            foreach (var e in entities)
            {
                e(w);
            }

            foreach (var t in b._types)
            {
                t(w);
            }

            w.WriteEndArray();
        }

        using var doc = JsonDocument.Parse(buffer.WrittenMemory);
        return doc.RootElement.Clone();
    }

    private static void WriteStrings(Utf8JsonWriter w, string name, IEnumerable<string> values)
    {
        w.WriteStartArray(name);
        foreach (var v in values)
        {
            w.WriteStringValue(v);
        }

        w.WriteEndArray();
    }

    /// <summary>The name the schema uses for <paramref name="type"/>; defines it on first use.</summary>
    private string Use(QapiType type)
    {
        switch (type)
        {
            case QapiRef r:
                return Use(r.Target);
            case QapiBuiltin b:
                if (_builtins.Add(b.Name))
                {
                    _types.Add(w =>
                    {
                        w.WriteStartObject();
                        w.WriteString("name", b.Name);
                        w.WriteString("meta-type", "builtin");
                        w.WriteString("json-type", b.JsonType);
                        w.WriteEndObject();
                    });
                }

                return b.Name;
            case QapiArray a:
            {
                var element = Use(a.Element);
                var name = "[" + element + "]";
                if (_builtins.Add(name))
                {
                    _types.Add(w =>
                    {
                        w.WriteStartObject();
                        w.WriteString("name", name);
                        w.WriteString("meta-type", "array");
                        w.WriteString("element-type", element);
                        w.WriteEndObject();
                    });
                }

                return name;
            }
        }

        if (_masked.TryGetValue(type.Name, out var masked))
        {
            return masked;
        }

        masked = _masked.Count.ToString(System.Globalization.CultureInfo.InvariantCulture);
        _masked[type.Name] = masked;
        var slot = _types.Count;
        _types.Add(null!); // keep the order of first use; filled below, after the member types are named
        switch (type)
        {
            case QapiEnum e:
                _types[slot] = w =>
                {
                    w.WriteStartObject();
                    w.WriteString("name", masked);
                    w.WriteString("meta-type", "enum");
                    w.WriteStartArray("members");
                    foreach (var v in e.Values)
                    {
                        w.WriteStartObject();
                        w.WriteString("name", v);
                        w.WriteEndObject();
                    }

                    w.WriteEndArray();
                    WriteStrings(w, "values", e.Values);
                    w.WriteEndObject();
                };
                break;
            case QapiAlternate alt:
            {
                var members = alt.Members.Select(Use).ToArray();
                _types[slot] = w =>
                {
                    w.WriteStartObject();
                    w.WriteString("name", masked);
                    w.WriteString("meta-type", "alternate");
                    w.WriteStartArray("members");
                    foreach (var m in members)
                    {
                        w.WriteStartObject();
                        w.WriteString("type", m);
                        w.WriteEndObject();
                    }

                    w.WriteEndArray();
                    w.WriteEndObject();
                };
                break;
            }

            case QapiObject o:
            {
                var members = o.Members.Select(m => (m.Name, Type: Use(m.Type), m.Optional)).ToArray();
                var variants = o.Variants.Select(v => (v.Case, Type: Use(v.Type))).ToArray();
                _types[slot] = w =>
                {
                    w.WriteStartObject();
                    w.WriteString("name", masked);
                    w.WriteString("meta-type", "object");
                    w.WriteStartArray("members");
                    foreach (var (name, t, optional) in members)
                    {
                        w.WriteStartObject();
                        w.WriteString("name", name);
                        w.WriteString("type", t);
                        if (optional)
                        {
                            w.WriteNull("default");
                        }

                        w.WriteEndObject();
                    }

                    w.WriteEndArray();
                    if (o.Tag is not null)
                    {
                        w.WriteString("tag", o.Tag);
                        w.WriteStartArray("variants");
                        foreach (var (c, t) in variants)
                        {
                            w.WriteStartObject();
                            w.WriteString("case", c);
                            w.WriteString("type", t);
                            w.WriteEndObject();
                        }

                        w.WriteEndArray();
                    }

                    w.WriteEndObject();
                };
                break;
            }
        }

        return masked;
    }
}
