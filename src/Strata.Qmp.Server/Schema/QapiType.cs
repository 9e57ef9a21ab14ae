namespace Strata.Qmp.Server.Schema;

/// <summary>
/// A QAPI type, as much of QEMU's schema language as the monitor needs: it drives both the argument checks (with
/// QEMU's qobject-input visitor messages, <see cref="QapiVisitor"/>) and query-qmp-schema (<see cref="SchemaBuilder"/>).
/// </summary>
public abstract class QapiType
{
    /// <summary>The type's name in the schema (builtins and arrays keep theirs; others are masked in introspection).</summary>
    public abstract string Name { get; }
}

/// <summary>Which integer range a builtin "int" accepts (the introspected type is "int" for all of them).</summary>
public enum QapiIntKind { Int64, UInt64, UInt32 }

/// <summary>str, int (and its sized variants), bool, number, any, null.</summary>
public sealed class QapiBuiltin : QapiType
{
    private QapiBuiltin(string name, string jsonType, QapiIntKind intKind = QapiIntKind.Int64)
    {
        Name = name;
        JsonType = jsonType;
        IntKind = intKind;
    }

    public override string Name { get; }

    /// <summary>SchemaInfoBuiltin's json-type.</summary>
    public string JsonType { get; }

    public QapiIntKind IntKind { get; }

    public static QapiBuiltin Str { get; } = new("str", "string");
    public static QapiBuiltin Int { get; } = new("int", "int");
    public static QapiBuiltin UInt64 { get; } = new("int", "int", QapiIntKind.UInt64);
    public static QapiBuiltin UInt32 { get; } = new("int", "int", QapiIntKind.UInt32);
    public static QapiBuiltin Bool { get; } = new("bool", "boolean");
    public static QapiBuiltin Number { get; } = new("number", "number");
    public static QapiBuiltin Any { get; } = new("any", "value");
    public static QapiBuiltin Null { get; } = new("null", "null");
}

/// <summary>An enumeration of strings.</summary>
public sealed class QapiEnum(string name, params string[] values) : QapiType
{
    public override string Name { get; } = name;
    public IReadOnlyList<string> Values { get; } = values;
}

/// <summary>A list of elements.</summary>
public sealed class QapiArray(QapiType element) : QapiType
{
    public QapiType Element { get; } = element;
    public override string Name => "[" + Element.Name + "]";
}

/// <summary>A member of an object type.</summary>
public sealed record QapiMember(string Name, QapiType Type, bool Optional = false)
{
    /// <summary>A mandatory member.</summary>
    public static QapiMember Req(string name, QapiType type) => new(name, type);

    /// <summary>An optional member.</summary>
    public static QapiMember Opt(string name, QapiType type) => new(name, type, true);
}

/// <summary>A struct, or a flat union: base members (one of which is the tag) and, per tag value, the variant's members.</summary>
public sealed class QapiObject : QapiType
{
    public QapiObject(string name, params QapiMember[] members)
    {
        Name = name;
        Members = members;
    }

    public QapiObject(string name, QapiMember[] members, string tag, params (string Case, QapiObject Type)[] variants)
        : this(name, members)
    {
        Tag = tag;
        Variants = variants;
    }

    public override string Name { get; }
    public IReadOnlyList<QapiMember> Members { get; }
    public string? Tag { get; }
    public IReadOnlyList<(string Case, QapiObject Type)> Variants { get; } = [];

    /// <summary>The empty struct (arguments of commands without any, and their return).</summary>
    public static QapiObject Empty { get; } = new("q_empty");
}

/// <summary>A type named before it is defined: a recursive reference (BlockdevRef's BlockdevOptions).</summary>
public sealed class QapiRef(string name, Func<QapiType> target) : QapiType
{
    public override string Name { get; } = name;
    public QapiType Target => target();
}

/// <summary>One of several types, chosen by the JSON type of the value.</summary>
public sealed class QapiAlternate(string name, params QapiType[] members) : QapiType
{
    public override string Name { get; } = name;
    public IReadOnlyList<QapiType> Members { get; } = members;
}
