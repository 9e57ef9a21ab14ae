using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Xunit;

namespace Strata.Qmp.Server.Tests;

/// <summary>
/// Generated requests, differential against qemu-storage-daemon 7.2 beyond the scripted cases. From qsd's own
/// query-qmp-schema, for every command strata-daemon implements: every case of its argument unions (each blockdev-add
/// driver, each transaction action, ...) with plausible values, and at each member path (nested ones included) a wrong
/// JSON type, a missing mandatory member, a null and an unexpected member: about 5,500 requests, each sent to both
/// daemons, whose answers must be equal. Allowed differences are Strata's documented ones only: it refuses what it does
/// not implement ("... is not supported by strata-daemon"), and names an internal snapshot itself when none is given.
/// </summary>
public sealed class QmpFuzzDifferentialTests
{
    private static readonly HashSet<string> Skipped = ["quit", "qmp_capabilities", "query-qmp-schema", "query-version", "query-commands",
        "object-add", "object-del"];

    [Fact]
    public async Task Generated_requests_get_the_answers_qsd_gives()
    {
        QemuTools.RequireTools("qemu-img", "qemu-storage-daemon");
        await using var qsd = await ScriptedDaemon.StartAsync(Daemons.Qsd);
        await using var strata = await ScriptedDaemon.StartAsync(Daemons.Strata);
        await qsd.StepAsync("""{"execute":"qmp_capabilities"}""");
        await strata.StepAsync("""{"execute":"qmp_capabilities"}""");
        var schema = new Schema(JsonNode.Parse((await qsd.StepAsync("""{"execute":"query-qmp-schema"}"""))[^1])!["return"]!.AsArray());
        var implemented = JsonNode.Parse((await strata.StepAsync("""{"execute":"query-commands"}"""))[^1])!["return"]!.AsArray()
            .Select(c => (string)c!["name"]!).ToHashSet(StringComparer.Ordinal);

        var report = new StringBuilder();
        int sent = 0, differences = 0;
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var command in schema.Commands.Where(c => implemented.Contains(c.Name) && !Skipped.Contains(c.Name)))
        {
            foreach (var request in schema.Requests(command.Name, command.ArgType))
            {
                if (!seen.Add(request))
                    continue;
                sent++;
                string q = (await qsd.StepAsync(request))[^1], s = (await strata.StepAsync(request))[^1];
                if (q == s || Allowed(command.Name, request, s))
                    continue;
                if (++differences <= 30)
                    report.AppendLine(request).AppendLine("  qsd:    " + q).AppendLine("  strata: " + s);
            }
        }

        Assert.True(sent > 3000, $"only {sent} requests were generated");
        Assert.True(differences == 0, $"{differences} of {sent} answers differ from qsd's:\n{report}");
    }

    private static bool Allowed(string command, string request, string strataAnswer) =>
        strataAnswer.Contains("is not supported by strata-daemon", StringComparison.Ordinal)
        || (command == "blockdev-snapshot-internal-sync" && !request.Contains("\"name\"", StringComparison.Ordinal));

    /// <summary>qsd's introspected schema, and the requests generated from it.</summary>
    private sealed class Schema(JsonArray entities)
    {
        private readonly Dictionary<string, JsonObject> _types =
            entities.Select(e => e!.AsObject()).ToDictionary(e => (string)e["name"]!, StringComparer.Ordinal);

        public IEnumerable<(string Name, string ArgType)> Commands =>
            _types.Values.Where(e => (string)e["meta-type"]! == "command").Select(e => ((string)e["name"]!, (string)e["arg-type"]!))
                .OrderBy(c => c.Item1, StringComparer.Ordinal);

        public IEnumerable<string> Requests(string command, string argType)
        {
            foreach (var args in Cases(argType, 0))
            {
                yield return Request(command, args);
                if (args is JsonObject o)
                {
                    foreach (var mutated in Mutations(argType, o, 0))
                        yield return Request(command, mutated);
                }
            }
        }

        private static string Request(string command, JsonNode? args) =>
            new JsonObject { ["execute"] = command, ["arguments"] = args?.DeepClone() }.ToJsonString();

        private string Meta(string type) => _types.TryGetValue(type, out var e) ? (string)e["meta-type"]! : "builtin";

        /// <summary>Plausible values of a type: one per union case at the top two levels, the first case deeper.</summary>
        private List<JsonNode?> Cases(string type, int depth, string? member = null)
        {
            if (!_types.TryGetValue(type, out var e))
                return [JsonValue.Create("x")];
            switch ((string)e["meta-type"]!)
            {
                case "builtin":
                    return [(string?)e["json-type"] switch
                    {
                        "int" => JsonValue.Create(1),
                        "number" => JsonValue.Create(1.5),
                        "boolean" => JsonValue.Create(true),
                        "null" => null,
                        "value" => new JsonObject(),
                        // A host that needs no name service, so that no request waits on DNS.
                        _ => JsonValue.Create(member == "host" ? "127.0.0.1" : "x"),
                    }];
                case "enum":
                    return [JsonValue.Create((string)e["members"]![0]!["name"]!)];
                case "array":
                    return [.. Cases((string)e["element-type"]!, depth + 1).Take(depth == 0 ? 8 : 1).Select(v => (JsonNode?)new JsonArray(v?.DeepClone()))];
                case "alternate":
                    return Cases((string)e["members"]![0]!["type"]!, depth + 1, member).Take(1).ToList();
                case "object":
                    if (depth > 5)
                        return [new JsonObject()];
                    var base_ = new JsonObject();
                    Fill(base_, e, depth);
                    if (e["variants"] is not JsonArray variants || variants.Count == 0)
                        return [base_];
                    var cases = new List<JsonNode?>();
                    foreach (var v in variants)
                    {
                        var o = (JsonObject)base_.DeepClone();
                        o[(string)e["tag"]!] = (string)v!["case"]!;
                        Fill(o, _types[(string)v["type"]!], depth);
                        cases.Add(o);
                    }
                    return depth <= 1 ? cases : cases.Take(1).ToList();
                default:
                    return [JsonValue.Create("x")];
            }
        }

        private void Fill(JsonObject o, JsonObject type, int depth)
        {
            foreach (var m in type["members"]!.AsArray())
            {
                if (m!.AsObject().ContainsKey("default"))
                    continue;
                string name = (string)m["name"]!;
                o[name] = Cases((string)m["type"]!, depth + 1, name)[0]?.DeepClone();
            }
        }

        /// <summary>The members of an object value: its base's, and those of the union case it names.</summary>
        private IEnumerable<JsonObject> Members(string type, JsonObject value)
        {
            var e = _types[type];
            foreach (var m in e["members"]!.AsArray())
                yield return m!.AsObject();
            if (e["tag"] is { } tag && value[(string)tag!] is JsonValue tv && tv.TryGetValue<string>(out var c) && e["variants"] is JsonArray variants)
            {
                foreach (var v in variants.Where(v => (string)v!["case"]! == c))
                {
                    foreach (var m in _types[(string)v!["type"]!]["members"]!.AsArray())
                        yield return m!.AsObject();
                }
            }
        }

        private IEnumerable<JsonNode?> Wrong(string type) => (Meta(type), _types.GetValueOrDefault(type)?["json-type"]?.GetValue<string>()) switch
        {
            ("builtin", "int" or "number") => [JsonValue.Create("1"), JsonValue.Create(true)],
            ("builtin", "string") => [JsonValue.Create(1), new JsonArray()],
            ("builtin", "boolean") => [JsonValue.Create("on")],
            ("enum", _) => [JsonValue.Create("nosuchvalue"), JsonValue.Create(1)],
            ("array", _) or ("object", _) => [JsonValue.Create("x")],
            _ => [],
        };

        private IEnumerable<JsonObject> Mutations(string type, JsonObject value, int depth)
        {
            if (depth > 3 || Meta(type) != "object")
                yield break;
            foreach (var m in Members(type, value))
            {
                string name = (string)m["name"]!, memberType = (string)m["type"]!;
                foreach (var w in Wrong(memberType))
                    yield return With(value, name, w);
                if (value.ContainsKey(name) && !m.ContainsKey("default"))
                {
                    var without = (JsonObject)value.DeepClone();
                    without.Remove(name);
                    yield return without;
                }
                yield return With(value, name, null);
                if (!value.ContainsKey(name))
                    continue;
                string inner = memberType;
                if (Meta(inner) == "alternate")
                    inner = (string)_types[inner]["members"]![0]!["type"]!;
                if (Meta(inner) == "array" && value[name] is JsonArray { Count: > 0 } list && list[0] is JsonObject element)
                {
                    foreach (var mutated in Mutations((string)_types[inner]["element-type"]!, element, depth + 1))
                        yield return With(value, name, new JsonArray(mutated));
                }
                else if (value[name] is JsonObject sub)
                {
                    foreach (var mutated in Mutations(inner, sub, depth + 1))
                        yield return With(value, name, mutated);
                }
            }
            yield return With(value, "extra-member", JsonValue.Create(1));
        }

        private static JsonObject With(JsonObject value, string name, JsonNode? member)
        {
            var copy = (JsonObject)value.DeepClone();
            copy[name] = member?.DeepClone();
            return copy;
        }
    }
}
