using System.Globalization;
using System.Text.Json.Nodes;
using Strata.Images.Storage;

namespace Strata.Block.Drivers.Blkdebug;

/// <summary>
/// blkdebug's rules from its two sources, in QEMU's order: the config file (QEMU's ini-like format with
/// [inject-error] and [set-state] sections and name = "value" lines) and the inject-error / set-state lists of the
/// options. All inject-error rules are created before all set-state rules, each kind file first.
/// </summary>
public static class BlkdebugConfig
{
    private static readonly Dictionary<string, DebugEvent> Events = DebugEvents.Names
        .Select((n, i) => (n, i)).ToDictionary(p => p.n, p => (DebugEvent)p.i);

    private static readonly Dictionary<string, BlkdebugIoType> IoTypes = new()
    {
        ["read"] = BlkdebugIoType.Read, ["write"] = BlkdebugIoType.Write, ["write-zeroes"] = BlkdebugIoType.WriteZeroes,
        ["discard"] = BlkdebugIoType.Discard, ["flush"] = BlkdebugIoType.Flush, ["block-status"] = BlkdebugIoType.BlockStatus,
    };

    private static readonly string[] InjectKeys = ["event", "state", "iotype", "errno", "sector", "once", "immediately"];
    private static readonly string[] SetStateKeys = ["event", "state", "new_state"];

    /// <summary>Reads the rules of <paramref name="configFile"/> (if any) and of the options' lists.</summary>
    public static List<BlkdebugRule> Read(string? configFile, BlockOptions o)
    {
        var inject = new List<Dictionary<string, string>>();
        var setState = new List<Dictionary<string, string>>();
        if (configFile != null)
            ParseFile(configFile, inject, setState);
        // QAPI has checked the types of the list members; the values then go through the same string form as the file's.
        ReadList(o, "inject-error", InjectKeys, inject);
        ReadList(o, "set-state", SetStateKeys, setState);

        var rules = new List<BlkdebugRule>();
        foreach (var g in inject)
            rules.Add(InjectRule(g));
        foreach (var g in setState)
            rules.Add(new BlkdebugRule
            {
                Event = EventOf(g), State = Number(g, "state", 0), NewState = Number(g, "new_state", 0),
            });
        return rules;
    }

    private static BlkdebugRule InjectRule(Dictionary<string, string> g)
    {
        var ev = EventOf(g);
        long sector = Number(g, "sector", -1);
        int mask = BlkdebugRule.DefaultIoTypes;
        if (g.TryGetValue("iotype", out var iotype))
        {
            if (!IoTypes.TryGetValue(iotype, out var t))
                throw new BlockException($"invalid parameter value: {iotype}");
            mask = 1 << (int)t;
        }
        return new BlkdebugRule
        {
            Event = ev, IsInjectError = true, State = Number(g, "state", 0), Errno = (int)Number(g, "errno", 5),
            Once = Bool(g, "once"), Immediately = Bool(g, "immediately"), Offset = sector == -1 ? -1 : sector * 512, IoTypeMask = mask,
        };
    }

    private static DebugEvent EventOf(Dictionary<string, string> g)
    {
        if (!g.TryGetValue("event", out var name))
            throw new BlockException("Missing event name for rule");
        return Events.TryGetValue(name, out var e) ? e : throw new BlockException($"invalid parameter value: {name}");
    }

    /// <summary>QEMU_OPT_NUMBER: an unsigned decimal, octal or hex number (negative values wrap as in C).</summary>
    private static long Number(Dictionary<string, string> g, string key, long dflt)
    {
        if (!g.TryGetValue(key, out var s))
            return dflt;
        bool neg = s.StartsWith('-');
        string t = neg ? s[1..] : s;
        bool ok = t.StartsWith("0x", StringComparison.OrdinalIgnoreCase)
            ? ulong.TryParse(t[2..], NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out ulong v)
            : ulong.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out v);
        if (!ok || t.Length == 0)
            throw new BlockException($"Parameter '{key}' expects a number");
        long l = unchecked((long)v);
        return neg ? -l : l;
    }

    private static bool Bool(Dictionary<string, string> g, string key)
    {
        if (!g.TryGetValue(key, out var s))
            return false;
        return s switch
        {
            "on" or "yes" or "true" or "y" => true,
            "off" or "no" or "false" or "n" => false,
            _ => throw new BlockException($"Parameter '{key}' expects 'on' or 'off'"),
        };
    }

    /// <summary>The members of one options list, checked as QAPI checks them, as strings.</summary>
    private static void ReadList(BlockOptions o, string key, string[] keys, List<Dictionary<string, string>> into)
    {
        var node = o.GetNode(key);
        if (node == null)
            return;
        var arr = AsList(node, o.Keyval, o.Prefix + key) ?? throw new BlockException($"Invalid parameter type for '{o.Prefix}{key}', expected: array");
        for (int i = 0; i < arr.Count; i++)
        {
            string where = $"{key}[{i}]";
            if (arr[i] is not JsonObject obj)
                throw new BlockException($"Invalid parameter type for '{o.Prefix}{where}', expected: object");
            var item = new BlockOptions(obj, o.Prefix + where + ".", o.Keyval);
            var g = new Dictionary<string, string>();
            string ev = item.RequireString("event");
            // QAPI's enum check names the member alone, without the path of the list element.
            if (!Events.ContainsKey(ev))
                throw new BlockException($"Parameter 'event' does not accept value '{ev}'");
            g["event"] = ev;
            foreach (var k in keys)
            {
                switch (k)
                {
                    case "event":
                        break;
                    case "iotype":
                        if (item.GetString(k) is { } t)
                            g[k] = IoTypes.ContainsKey(t) ? t : throw new BlockException($"Parameter 'iotype' does not accept value '{t}'");
                        break;
                    case "once" or "immediately":
                        if (item.GetBool(k) is { } b)
                            g[k] = b ? "on" : "off";
                        break;
                    default:
                        if (item.GetInt(k) is { } n)
                            g[k] = n.ToString(CultureInfo.InvariantCulture);
                        else if (k == "new_state")
                            throw new BlockException($"Parameter '{o.Prefix}{where}.new_state' is missing");
                        break;
                }
            }
            item.EnsureAllRead();
            into.Add(g);
        }
    }

    /// <summary>
    /// A list option: a JSON array, or in key=value form (--blockdev inject-error.0.event=...) an object whose keys are
    /// 0, 1, 2, ... as QEMU's keyval makes a list of it; an index left out is "Parameter 'NAME.I' missing".
    /// </summary>
    internal static IReadOnlyList<JsonNode?>? AsList(JsonNode node, bool keyval, string name)
    {
        if (node is JsonArray arr)
            return [.. arr];
        if (!keyval || node is not JsonObject obj)
            return null;
        var indexes = new SortedDictionary<long, JsonNode?>();
        foreach (var (k, v) in obj)
        {
            if (!long.TryParse(k, NumberStyles.None, CultureInfo.InvariantCulture, out long i))
                return null;
            indexes[i] = v;
        }
        var list = new List<JsonNode?>(indexes.Count);
        foreach (var (i, v) in indexes)
        {
            if (i != list.Count)
                throw new BlockException($"Parameter '{name}.{list.Count}' missing");
            list.Add(v);
        }
        return list;
    }

    /// <summary>qemu_config_parse: [group] headers, name = "value" lines, # comments and empty lines.</summary>
    private static void ParseFile(string path, List<Dictionary<string, string>> inject, List<Dictionary<string, string>> setState)
    {
        string[] lines;
        try
        {
            lines = File.ReadAllLines(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            string why = e switch
            {
                FileNotFoundException or DirectoryNotFoundException => "No such file or directory",
                UnauthorizedAccessException => "Permission denied",
                _ => e.Message,
            };
            throw new BlockException($"Could not read blkdebug config file: {why}");
        }
        Dictionary<string, string>? current = null;
        foreach (var line in lines)
        {
            if (line.Length == 0 || line[0] == '#')
                continue;
            if (line[0] == '[')
            {
                // "[group]" or "[group "id"]"
                int close = line.IndexOf(']');
                string inside = close > 0 ? line[1..close] : line[1..];
                string group = inside.Split(' ', 2)[0];
                current = [];
                if (group == "inject-error")
                    inject.Add(current);
                else if (group == "set-state")
                    setState.Add(current);
                else
                    throw new BlockException($"There is no option group '{group}'");
                continue;
            }
            // ' NAME = "VALUE"': as QEMU's sscanf, a line whose first word is not followed by = "..." sets NAME to "".
            string text = line.TrimStart(' ', '\t');
            int wordEnd = text.IndexOfAny([' ', '\t']);
            string name = wordEnd < 0 ? text : text[..wordEnd];
            if (name.Length == 0)
                throw new BlockException("parse error");
            string rest = wordEnd < 0 ? "" : text[wordEnd..].TrimStart(' ', '\t');
            string value = "";
            if (rest.StartsWith('='))
            {
                rest = rest[1..].TrimStart(' ', '\t');
                int end = rest.Length > 0 && rest[0] == '"' ? rest.IndexOf('"', 1) : -1;
                if (end > 0)
                    value = rest[1..end];
            }
            if (current == null)
                throw new BlockException("no group defined");
            var allowed = inject.Contains(current) ? InjectKeys : SetStateKeys;
            if (!allowed.Contains(name))
                throw new BlockException($"Invalid parameter '{name}'");
            current[name] = value;
        }
    }
}
