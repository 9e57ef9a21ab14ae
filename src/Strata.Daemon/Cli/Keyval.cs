using System.Text;
using System.Text.Json.Nodes;

namespace Strata.Daemon.Cli;

/// <summary>
/// QEMU's keyval syntax for command-line options: "key=value,key2=value2", ",," for a literal comma, dotted keys
/// for nested objects ("file.filename=x"), and an implied first key ("file" in "--blockdev file,..." means
/// driver=file). A value starting with '{' is JSON instead. Scalars stay strings (the consumer parses them).
/// </summary>
public static class Keyval
{
    public static JsonObject Parse(string text, string? impliedKey)
    {
        var root = new JsonObject();
        int i = 0;
        bool first = true;
        while (i < text.Length)
        {
            string key;
            string? value;
            int eq = IndexOfUnescaped(text, i, '=');
            int comma = IndexOfUnescaped(text, i, ',');
            if (first && impliedKey != null && (eq < 0 || (comma >= 0 && comma < eq)))
            {
                key = impliedKey;
                value = ReadValue(text, ref i);
            }
            else
            {
                if (eq < 0 || (comma >= 0 && comma < eq))
                {
                    string bare = comma < 0 ? text[i..] : text[i..comma];
                    throw new FormatException($"Expected '=' after parameter '{bare}'");
                }
                key = text[i..eq];
                i = eq + 1;
                value = ReadValue(text, ref i);
            }
            first = false;
            if (key.Length == 0)
                throw new FormatException("Invalid parameter ''");
            Set(root, key, value);
        }
        return root;
    }

    private static int IndexOfUnescaped(string s, int from, char c)
    {
        for (int k = from; k < s.Length; k++)
        {
            if (s[k] != c)
                continue;
            if (c == ',' && k + 1 < s.Length && s[k + 1] == ',')
            {
                k++;
                continue;
            }
            return k;
        }
        return -1;
    }

    private static string ReadValue(string s, ref int i)
    {
        var sb = new StringBuilder();
        while (i < s.Length)
        {
            char c = s[i];
            if (c == ',')
            {
                if (i + 1 < s.Length && s[i + 1] == ',')
                {
                    sb.Append(',');
                    i += 2;
                    continue;
                }
                i++;
                break;
            }
            sb.Append(c);
            i++;
        }
        return sb.ToString();
    }

    private static void Set(JsonObject root, string key, string value)
    {
        var parts = key.Split('.');
        var obj = root;
        for (int k = 0; k < parts.Length - 1; k++)
        {
            if (obj[parts[k]] is JsonObject child)
                obj = child;
            else if (obj.ContainsKey(parts[k]))
                throw new FormatException($"Parameter '{string.Join('.', parts[..(k + 1)])}' used inconsistently");
            else
            {
                child = new JsonObject();
                obj[parts[k]] = child;
                obj = child;
            }
        }
        string last = parts[^1];
        if (obj.ContainsKey(last))
        {
            if (obj[last] is JsonObject)
                throw new FormatException($"Parameter '{key}' used inconsistently");
            obj[last] = value; // a later value wins, as in QEMU
            return;
        }
        obj[last] = value;
    }

    /// <summary>JSON if it looks like JSON ({...}), keyval otherwise. Returns whether it was keyval.</summary>
    public static (JsonObject Options, bool IsKeyval) ParseOption(string text, string? impliedKey)
    {
        if (text.TrimStart().StartsWith('{'))
        {
            var node = JsonNode.Parse(text) as JsonObject ?? throw new FormatException("JSON options must be an object");
            return (node, false);
        }
        return (Parse(text, impliedKey), true);
    }
}
