using System.Text.Json;
using Strata.Qmp.Json;

namespace Strata.Qmp.Server.Schema;

/// <summary>
/// Checks a command's arguments against its QAPI type as QEMU 7.2's qobject-input visitor does
/// (qapi/qobject-input-visitor.c): members in schema order, a missing mandatory member, a wrong JSON type, an enum
/// value out of range, and finally the first member nobody visited (in QDict order), each with QEMU's message.
/// </summary>
public static class QapiVisitor
{
    /// <summary>Throws a <see cref="QmpException"/> with QEMU's error for the first problem of <paramref name="args"/>.</summary>
    public static void Check(QapiObject type, JsonElement args)
    {
        if (args.ValueKind == JsonValueKind.Undefined)
        {
            // No "arguments": QEMU visits an empty dict.
            using var empty = JsonDocument.Parse("{}");
            VisitStruct(type, empty.RootElement, null);
            return;
        }

        VisitStruct(type, args, null);
    }

    private static string Full(string? prefix, string name) => prefix is null ? name : prefix + "." + name;

    private static QmpException Error(string desc) => new(QmpError.Generic(desc));

    private static void VisitStruct(QapiObject type, JsonElement obj, string? path)
    {
        var visited = new HashSet<string>(StringComparer.Ordinal);
        VisitMembers(type.Members, obj, path, visited);
        if (type.Tag is { } tag && obj.TryGetProperty(tag, out var tagValue) && tagValue.ValueKind == JsonValueKind.String)
        {
            var value = tagValue.GetString();
            var variant = type.Variants.FirstOrDefault(v => v.Case == value).Type;
            if (variant is null)
            {
                // A case QEMU knows but Strata does not implement (a blockdev-add driver): its members are unknown
                // here, so what is left over is not judged; the handler refuses the case itself.
                return;
            }

            VisitMembers(variant.Members, obj, path, visited);
        }

        // visit_check_struct: the first member left over, in the order QEMU's QDict walks its buckets.
        var names = new List<string>();
        foreach (var p in obj.EnumerateObject())
        {
            names.Add(p.Name);
        }

        foreach (var i in QDictOrder.Order(names))
        {
            if (!visited.Contains(names[i]))
            {
                throw Error($"Parameter '{Full(path, names[i])}' is unexpected");
            }
        }
    }

    private static void VisitMembers(IReadOnlyList<QapiMember> members, JsonElement obj, string? path, HashSet<string> visited)
    {
        foreach (var m in members)
        {
            if (!obj.TryGetProperty(m.Name, out var value))
            {
                if (!m.Optional)
                {
                    throw Error($"Parameter '{Full(path, m.Name)}' is missing");
                }

                continue;
            }

            visited.Add(m.Name);
            Visit(m.Type, value, m.Name, Full(path, m.Name));
        }
    }

    /// <param name="name">The name QEMU passes to the visitor (null for list elements).</param>
    /// <param name="full">The full name QEMU prints in type errors ("addr.data.path", "enable[0]").</param>
    private static void Visit(QapiType type, JsonElement value, string? name, string full)
    {
        switch (type)
        {
            case QapiRef r:
                Visit(r.Target, value, name, full);
                break;
            case QapiBuiltin b:
                VisitBuiltin(b, value, name, full);
                break;
            case QapiEnum e:
                if (value.ValueKind != JsonValueKind.String)
                {
                    throw Error($"Invalid parameter type for '{full}', expected: string");
                }

                var s = value.GetString();
                if (!e.Values.Contains(s))
                {
                    throw Error($"Parameter '{name ?? "null"}' does not accept value '{s}'");
                }

                break;
            case QapiArray a:
                if (value.ValueKind != JsonValueKind.Array)
                {
                    throw Error($"Invalid parameter type for '{full}', expected: array");
                }

                var i = 0;
                foreach (var item in value.EnumerateArray())
                {
                    Visit(a.Element, item, null, $"{full}[{i++}]");
                }

                break;
            case QapiObject o:
                if (value.ValueKind != JsonValueKind.Object)
                {
                    throw Error($"Invalid parameter type for '{full}', expected: object");
                }

                VisitStruct(o, value, full);
                break;
            case QapiAlternate alt:
                foreach (var member in alt.Members)
                {
                    if (Matches(member, value))
                    {
                        Visit(member, value, name, full);
                        return;
                    }
                }

                // QEMU names only the member here, not its path (qobject_input_start_alternate).
                throw Error($"Invalid parameter type for '{name ?? "null"}', expected: {alt.Name}");
        }
    }

    private static bool Matches(QapiType type, JsonElement value) => type switch
    {
        QapiBuiltin b when b.JsonType == "string" => value.ValueKind == JsonValueKind.String,
        QapiBuiltin b when b.JsonType is "int" or "number" => value.ValueKind == JsonValueKind.Number,
        QapiBuiltin b when b.JsonType == "boolean" => value.ValueKind is JsonValueKind.True or JsonValueKind.False,
        QapiBuiltin b when b.JsonType == "null" => value.ValueKind == JsonValueKind.Null,
        QapiBuiltin => true,
        QapiEnum => value.ValueKind == JsonValueKind.String,
        QapiArray => value.ValueKind == JsonValueKind.Array,
        QapiObject => value.ValueKind == JsonValueKind.Object,
        QapiRef r => Matches(r.Target, value),
        _ => false,
    };

    private static void VisitBuiltin(QapiBuiltin b, JsonElement value, string? name, string full)
    {
        switch (b.JsonType)
        {
            case "string":
                if (value.ValueKind != JsonValueKind.String)
                {
                    throw Error($"Invalid parameter type for '{full}', expected: string");
                }

                break;
            case "boolean":
                if (value.ValueKind is not (JsonValueKind.True or JsonValueKind.False))
                {
                    throw Error($"Invalid parameter type for '{full}', expected: boolean");
                }

                break;
            case "number":
                if (value.ValueKind != JsonValueKind.Number)
                {
                    throw Error($"Invalid parameter type for '{full}', expected: number");
                }

                break;
            case "null":
                if (value.ValueKind != JsonValueKind.Null)
                {
                    throw Error($"Invalid parameter type for '{full}', expected: null");
                }

                break;
            case "int":
                VisitInt(b.IntKind, value, name, full);
                break;
        }
    }

    private static void VisitInt(QapiIntKind kind, JsonElement value, string? name, string full)
    {
        if (kind == QapiIntKind.Int64)
        {
            if (value.ValueKind != JsonValueKind.Number || !value.TryGetInt64(out _))
            {
                throw Error($"Invalid parameter type for '{full}', expected: integer");
            }

            return;
        }

        // uint64 (and the narrower unsigned types, visited as uint64 first): negative values are accepted for
        // backward compatibility and read as their two's complement.
        ulong u;
        if (value.ValueKind == JsonValueKind.Number && value.TryGetUInt64(out var uv))
        {
            u = uv;
        }
        else if (value.ValueKind == JsonValueKind.Number && value.TryGetInt64(out var sv))
        {
            u = unchecked((ulong)sv);
        }
        else
        {
            throw Error($"Parameter '{full}' expects uint64");
        }

        if (kind == QapiIntKind.UInt32 && u > uint.MaxValue)
        {
            throw Error($"Parameter '{name ?? "null"}' expects uint32_t");
        }
    }
}
