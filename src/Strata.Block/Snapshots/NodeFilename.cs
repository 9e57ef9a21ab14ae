using System.Text;
using Strata.Block.Drivers;

namespace Strata.Block.Snapshots;

/// <summary>
/// The file name QEMU gives a node (bdrv_refresh_filename): a format node over a plain file is known by that file's
/// name, unless its backing is not the one its header names (an overlay put in front by a snapshot, a backing given
/// by reference or removed with backing: null); then its name is "json:" and its full open options, which is what QEMU
/// shows in queries and writes as the backing name of the next overlay.
/// </summary>
public static class NodeFilename
{
    public static string Of(BlockNode node, BlockGraph graph) => Refresh(node, graph).Filename;

    private static (string Filename, string Options) Refresh(BlockNode node, BlockGraph graph)
    {
        switch (node)
        {
            case Qcow2Node q when q.FileChild is { } fileChild:
            {
                var file = Refresh(fileChild, graph);
                string? header = q.Image.Header.BackingFileName;
                var members = new List<(string, string)> { ("driver", Quote("qcow2")) };
                bool overridden;
                if (q.BackingChild is { } backingChild)
                {
                    var backing = Refresh(backingChild, graph);
                    // QEMU's auto_backing_file: the backing's own name if it came from the header, else the header's text.
                    string auto = graph.HasBackingFromHeader(q) ? backing.Filename : header ?? "";
                    overridden = auto != backing.Filename;
                    if (overridden)
                        members.Add(("backing", backing.Options)); // children are listed newest first
                    members.Add(("file", file.Options));
                }
                else
                {
                    overridden = header != null;
                    members.Add(("file", file.Options));
                    if (overridden)
                        members.Add(("backing", "null"));
                }
                string options = Dict(members);
                return (overridden || IsJson(file.Filename) ? "json:" + options : file.Filename, options);
            }
            case RawNode r when r.FileChild is { } fileChild:
            {
                var file = Refresh(fileChild, graph);
                string options = Dict([("driver", Quote("raw")), ("file", file.Options)]);
                return (IsJson(file.Filename) ? "json:" + options : file.Filename, options);
            }
            case Drivers.Blkdebug.BlkdebugNode b when b.Children.Count > 0:
            {
                // blkdebug_refresh_filename: blkdebug:CONFIG:IMAGE when nothing but a config file was given, else json:.
                var image = Refresh(b.Children[0].Child, graph);
                var members = new List<(string, string)> { ("driver", Quote("blkdebug")) };
                foreach (var (key, value) in b.StrongOptions)
                    members.Add((key, Scalar(value)));
                members.Add(("image", image.Options));
                string options = Dict(members);
                bool exact = !IsJson(image.Filename) && b.StrongOptions.All(o => o.Key == "config");
                return (exact ? b.FileName : "json:" + options, options);
            }
            case FileNode f:
                return (f.FileName, Dict([("driver", Quote("file")), ("filename", Quote(f.FileName))]));
            default:
                return (node.FileName, Dict([("driver", Quote(node.Driver))]));
        }
    }

    /// <summary>A JSON object printed as QEMU's qobject_to_json prints a QDict: members in hash-bucket order.</summary>
    private static string Dict(List<(string Key, string Value)> members)
    {
        var order = Enumerable.Range(0, members.Count).ToArray();
        var buckets = members.Select(m => Bucket(m.Key)).ToArray();
        // By bucket; within a bucket the member inserted last comes first.
        Array.Sort(order, (a, b) => buckets[a] != buckets[b] ? buckets[a].CompareTo(buckets[b]) : b.CompareTo(a));
        var sb = new StringBuilder("{");
        foreach (int i in order)
        {
            if (sb.Length > 1)
                sb.Append(", ");
            sb.Append(Quote(members[i].Key)).Append(": ").Append(members[i].Value);
        }
        return sb.Append('}').ToString();
    }

    /// <summary>QDict's bucket of a key: tdb_hash over its bytes, modulo 512 buckets.</summary>
    private static uint Bucket(string key)
    {
        var bytes = Encoding.UTF8.GetBytes(key);
        unchecked
        {
            uint value = 0x238F13AFu * (uint)bytes.Length;
            for (int i = 0; i < bytes.Length; i++)
                value += (uint)bytes[i] << (i * 5 % 24);
            return (1103515243u * value + 12345u) % 512;
        }
    }

    private static bool IsJson(string filename) => filename.StartsWith("json:", StringComparison.Ordinal);

    /// <summary>An option's value as QEMU keeps it: strings quoted, numbers and booleans as given.</summary>
    private static string Scalar(System.Text.Json.Nodes.JsonNode value) =>
        value is System.Text.Json.Nodes.JsonValue v && v.TryGetValue<string>(out var str) ? Quote(str) : value.ToJsonString();

    /// <summary>A JSON string as QEMU writes it (quotes, backslashes and control characters escaped).</summary>
    private static string Quote(string s)
    {
        var sb = new StringBuilder("\"");
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                default:
                    if (c < 0x20 || c == 0x7f)
                        sb.Append($"\\u{(int)c:X4}");
                    else
                        sb.Append(c);
                    break;
            }
        }
        return sb.Append('"').ToString();
    }
}
