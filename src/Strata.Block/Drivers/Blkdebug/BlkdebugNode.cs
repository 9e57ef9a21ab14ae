using Strata.Images.Format;
using Strata.Images.Raw;
using Strata.Images.Storage;

namespace Strata.Block.Drivers.Blkdebug;

/// <summary>
/// The "blkdebug" filter (QEMU's fault injection): passes requests to its image child, failing those the rules pick.
/// A format node on top (its file child) reports its events to it through its storage.
/// </summary>
public sealed class BlkdebugNode : BlockNode
{
    private readonly BlockNode _image;
    private readonly RawImage _raw;

    private BlkdebugNode(string name, BlockNodeSettings settings, bool autoNamed, BlockNode image, BlkdebugRules rules,
        string? configFile, int align)
        : base(name, "blkdebug", settings, autoNamed)
    {
        _image = image;
        Rules = rules;
        ConfigFile = configFile;
        _raw = new RawImage(new BlkdebugStorage(BytesOf(image), rules, FileNameOf(configFile, image), align));
    }

    public BlkdebugRules Rules { get; }

    /// <summary>
    /// What blkdebug forwards to: over a protocol node (file, null-co, another blkdebug) its storage; over a format
    /// (qcow2) the virtual disk the format shows, as QEMU's blkdebug passes requests to whatever node its image is.
    /// </summary>
    private static IStorage BytesOf(BlockNode image) => image.DriverImage is RawImage ? image.Storage : new GuestViewStorage(image);

    /// <summary>
    /// The options QEMU keeps in the node's name (its strong runtime options) in QEMU's order, lists flattened
    /// ("inject-error.0.event"): with any of them but config, the node is known by a json: name.
    /// </summary>
    public IReadOnlyList<(string Key, System.Text.Json.Nodes.JsonNode Value)> StrongOptions { get; private init; } = [];

    private static List<(string, System.Text.Json.Nodes.JsonNode)> CollectStrongOptions(System.Text.Json.Nodes.JsonObject raw)
    {
        var list = new List<(string, System.Text.Json.Nodes.JsonNode)>();
        foreach (var key in new[] { "config", "inject-error", "set-state", "align", "max-transfer", "opt-write-zero", "max-write-zero", "opt-discard", "max-discard" })
        {
            if (!raw.TryGetPropertyValue(key, out var v) || v == null)
                continue;
            if (BlkdebugConfig.AsList(v, keyval: true, key) is { } arr)
            {
                for (int i = 0; i < arr.Count; i++)
                    if (arr[i] is System.Text.Json.Nodes.JsonObject item)
                        foreach (var (member, value) in item)
                            if (value != null)
                                list.Add(($"{key}.{i}.{member}", Detached(value)));
            }
            else
            {
                list.Add((key, Detached(v)));
            }
        }
        return list;
    }

    /// <summary>A copy that outlives the command's JSON document.</summary>
    private static System.Text.Json.Nodes.JsonNode Detached(System.Text.Json.Nodes.JsonNode value) =>
        System.Text.Json.Nodes.JsonNode.Parse(value.ToJsonString())!;
    public string? ConfigFile { get; }

    /// <summary>QEMU's blkdebug:CONFIG:IMAGE name (what its filename syntax takes).</summary>
    public override string FileName => FileNameOf(ConfigFile, _image);
    protected override IImage Inner => _raw;

    private static string FileNameOf(string? config, BlockNode image) => $"blkdebug:{config}:{image.FileName}";

    /// <summary>blkdebug_open: rules first (config file, then the option lists), then the image child, then the limits.</summary>
    internal static async ValueTask<BlkdebugNode> OpenAsync(string name, BlockNodeSettings settings, bool autoNamed, BlockOptions o,
        Func<System.Text.Json.Nodes.JsonNode?, ValueTask<BlockNode>> openImage)
    {
        var imageOption = o.GetNode("image");
        string? config = o.GetString("config");
        long align = SizeOption(o, "align");
        long maxTransfer = SizeOption(o, "max-transfer");
        long optWriteZero = SizeOption(o, "opt-write-zero");
        long maxWriteZero = SizeOption(o, "max-write-zero");
        long optDiscard = SizeOption(o, "opt-discard");
        long maxDiscard = SizeOption(o, "max-discard");
        var take = ReadPermissionList(o, "take-child-perms");
        var unshare = ReadPermissionList(o, "unshare-child-perms");
        var ruleList = BlkdebugConfig.Read(config, o);
        o.EnsureAllRead();
        if (imageOption == null)
            throw new BlockException("Parameter 'image' is missing");

        var image = await openImage(imageOption).ConfigureAwait(false);
        // QEMU's checks of the limits (QEMU_OPT_SIZE: negative numbers are huge).
        if (align != 0 && ((ulong)align >= int.MaxValue || (align & (align - 1)) != 0))
            throw new BlockException($"Cannot meet constraints with align {(ulong)align}");
        long a = Math.Max(align, BytesOf(image).RequestAlignment);
        CheckLimit("max-transfer", maxTransfer, a);
        CheckLimit("opt-write-zero", optWriteZero, a);
        CheckLimit("max-write-zero", maxWriteZero, Math.Max(optWriteZero, a));
        CheckLimit("opt-discard", optDiscard, a);
        CheckLimit("max-discard", maxDiscard, Math.Max(optDiscard, a));

        var rules = new BlkdebugRules(ruleList);
        var node = new BlkdebugNode(name, settings, autoNamed, image, rules, config, (int)align)
        {
            _take = take, _unshare = unshare, StrongOptions = CollectStrongOptions(o.Raw),
        };
        node.AttachChild(image, "image", ChildRole.Filtered);
        rules.OnEvent(Images.Storage.DebugEvent.None);
        return node;
    }

    /// <summary>QEMU_OPT_SIZE: the options layer refuses negative numbers before the driver sees them.</summary>
    private static long SizeOption(BlockOptions o, string key)
    {
        long v = o.GetInt(key) ?? 0;
        if (v < 0)
            throw new BlockException($"Parameter '{o.Prefix}{key}' expects a non-negative number below 2^64");
        return v;
    }

    private BlockPermissions _take;
    private BlockPermissions _unshare;

    /// <summary>bdrv_filter_default_perms, then what take-child-perms adds and unshare-child-perms removes.</summary>
    internal override (BlockPermissions Perm, BlockPermissions Shared) ChildPermissions(ChildRole role, BlockPermissions perm, BlockPermissions shared)
    {
        var r = base.ChildPermissions(role, perm, shared);
        return (r.Perm | _take, r.Shared & ~_unshare);
    }

    private static void CheckLimit(string key, long value, long multipleOf)
    {
        if (value != 0 && ((ulong)value >= int.MaxValue || value % multipleOf != 0))
            throw new BlockException($"Cannot meet constraints with {key} {(ulong)value}");
    }

    private static readonly Dictionary<string, BlockPermissions> Permissions = new()
    {
        ["consistent-read"] = BlockPermissions.ConsistentRead, ["write"] = BlockPermissions.Write,
        ["write-unchanged"] = BlockPermissions.WriteUnchanged, ["resize"] = BlockPermissions.Resize,
    };

    /// <summary>take-child-perms / unshare-child-perms: permissions the filter takes on, or stops sharing of, its child.</summary>
    private static BlockPermissions ReadPermissionList(BlockOptions o, string key)
    {
        var result = BlockPermissions.None;
        var node = o.GetNode(key);
        if (node == null)
            return result;
        var arr = BlkdebugConfig.AsList(node, o.Keyval, o.Prefix + key) ?? throw new BlockException($"Invalid parameter type for '{o.Prefix}{key}', expected: array");
        for (int i = 0; i < arr.Count; i++)
        {
            string? s = arr[i] is System.Text.Json.Nodes.JsonValue v && v.TryGetValue<string>(out var t) ? t : null;
            if (s == null)
                throw new BlockException($"Invalid parameter type for '{o.Prefix}{key}[{i}]', expected: string");
            if (!Permissions.TryGetValue(s, out var p))
                throw new BlockException($"Parameter '{o.Prefix}{key}[{i}]' does not accept value '{s}'");
            result |= p;
        }
        return result;
    }

    /// <summary>The image child is a node of the graph of its own; nothing to close here.</summary>
    public override ValueTask CloseAsync() => ValueTask.CompletedTask;
}
