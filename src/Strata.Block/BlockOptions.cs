using System.Text.Json;
using System.Text.Json.Nodes;

namespace Strata.Block;

/// <summary>
/// Reads one level of blockdev options (a JSON object, as QMP's blockdev-add and --blockdev give them) member by
/// member, with QEMU's error messages; members nobody read are reported as unexpected.
/// </summary>
public sealed class BlockOptions
{
    private readonly JsonObject _obj;
    private readonly HashSet<string> _read = [];
    private readonly string _prefix;

    /// <param name="keyval">
    /// The options come from a command line's key=value form, where every scalar is a string: booleans and
    /// integers are parsed from text, with QEMU's keyval messages.
    /// </param>
    public BlockOptions(JsonObject obj, string prefix = "", bool keyval = false)
    {
        _obj = obj;
        _prefix = prefix;
        Keyval = keyval;
    }

    public bool Keyval { get; }

    public JsonObject Raw => _obj;

    /// <summary>Where these options sit in the whole ("file." for a child's), for messages.</summary>
    public string Prefix => _prefix;

    private string Name(string key) => _prefix + key;

    public bool Has(string key) => _obj.ContainsKey(key);

    public JsonNode? GetNode(string key)
    {
        _read.Add(key);
        return _obj.TryGetPropertyValue(key, out var v) ? v : null;
    }

    public string? GetString(string key)
    {
        var v = GetNode(key);
        if (v == null)
            return null;
        if (v is JsonValue jv && jv.GetValueKind() == JsonValueKind.String)
            return jv.GetValue<string>();
        throw new BlockException($"Invalid parameter type for '{Name(key)}', expected: string");
    }

    public string RequireString(string key) =>
        GetString(key) ?? throw new BlockException($"Parameter '{Name(key)}' is missing");

    public bool? GetBool(string key)
    {
        var v = GetNode(key);
        if (v == null)
            return null;
        if (v is JsonValue jv && jv.GetValueKind() is JsonValueKind.True or JsonValueKind.False)
            return jv.GetValue<bool>();
        if (Keyval && v is JsonValue sv && sv.TryGetValue<string>(out var text))
            return ParseKeyvalBool(text) ?? throw new BlockException($"Parameter '{Name(key)}' expects 'on' or 'off'");
        throw new BlockException($"Invalid parameter type for '{Name(key)}', expected: boolean");
    }

    public long? GetInt(string key)
    {
        var v = GetNode(key);
        if (v == null)
            return null;
        if (v is JsonValue jv && jv.GetValueKind() == JsonValueKind.Number && jv.TryGetValue<long>(out long l))
            return l;
        if (Keyval && v is JsonValue sv && sv.TryGetValue<string>(out var text))
            return long.TryParse(text, System.Globalization.NumberStyles.AllowLeadingSign, null, out long n)
                ? n
                : throw new BlockException($"Parameter '{Name(key)}' expects integer");
        throw new BlockException($"Invalid parameter type for '{Name(key)}', expected: integer");
    }

    public T? GetEnum<T>(string key, IReadOnlyDictionary<string, T> values) where T : struct
    {
        string? s = GetString(key);
        if (s == null)
            return null;
        return values.TryGetValue(s, out var t) ? t : throw new BlockException($"Parameter '{Name(key)}' does not accept value '{s}'");
    }

    public BlockOptions? GetObject(string key)
    {
        var v = GetNode(key);
        if (v == null)
            return null;
        if (v is JsonObject o)
            return new BlockOptions(o, Name(key) + ".", Keyval);
        throw new BlockException($"Invalid parameter type for '{Name(key)}', expected: object");
    }

    /// <summary>QEMU's qapi_bool_parse.</summary>
    public static bool? ParseKeyvalBool(string text) => text switch
    {
        "on" or "yes" or "true" or "y" => true,
        "off" or "no" or "false" or "n" => false,
        _ => null,
    };

    /// <summary>Every member must have been read by the driver: QEMU refuses the others.</summary>
    public void EnsureAllRead()
    {
        foreach (var (key, _) in _obj)
            if (!_read.Contains(key))
                throw new BlockException($"Parameter '{Name(key)}' is unexpected");
    }
}
