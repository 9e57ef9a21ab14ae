using System.Text.Json.Nodes;
using Strata.Images.Storage;
using Xunit;

namespace Strata.Block.Tests;

/// <summary>QEMU's permission propagation through the graph and the image locks that follow it (qsd's values; the QMP and
/// interop suites compare against qsd itself).</summary>
public sealed class PermissionTests
{
    private const BlockPermissions CR = BlockPermissions.ConsistentRead, W = BlockPermissions.Write;
    private const BlockPermissions WU = BlockPermissions.WriteUnchanged, RS = BlockPermissions.Resize;

    private static void QemuImg(params string[] args) => QemuTools.QemuImg(args).EnsureSuccess();

    private static JsonObject Json(string s) => JsonNode.Parse(s)!.AsObject();

    private sealed class User(string name) : IBlockParent
    {
        public string Description => name;
    }

    private static string Locks(string path) => string.Join(",", ImageLock.ProbeHeldBytes(path));

    private static BlockEdge Edge(BlockNode parent, string role) => parent.Children.Single(e => e.Role == role);

    [Fact]
    public async Task Child_permissions_follow_the_parents_and_locks_follow_the_permissions()
    {
        using var dir = new TempDir("perm");
        string baseImg = Path.Combine(dir.Path, "base.qcow2"), top = Path.Combine(dir.Path, "top.qcow2");
        QemuImg("create", "-q", "-f", "qcow2", baseImg, "1M");
        QemuImg("create", "-q", "-f", "qcow2", "-b", baseImg, "-F", "qcow2", top);
        await using var g = new BlockGraph();
        var q = await g.AddAsync(Json($$$"""{"driver":"qcow2","node-name":"q","file":{"driver":"file","filename":"{{{top}}}"}}"""));
        var b = q.BackingChild!;

        // No parent: the format driver still takes its file for metadata; the backing child takes nothing.
        Assert.Equal((CR | W | RS, CR | WU), (Edge(q, "file").Permissions, Edge(q, "file").Shared));
        Assert.Equal((BlockPermissions.None, BlockPermissions.All), (Edge(q, "backing").Permissions, Edge(q, "backing").Shared));
        Assert.Equal((CR, CR | WU), (Edge(b, "file").Permissions, Edge(b, "file").Shared)); // read-only backing
        Assert.Equal("100,101,103,201,203", Locks(top));
        Assert.Equal("100,201,203", Locks(baseImg));

        // A reader that does not share writing: the backing edge reads and no longer lets others write or resize.
        var reader = new BlockBackend("reader", q, CR, CR | WU);
        Assert.Equal((CR, CR | WU), (Edge(q, "backing").Permissions, Edge(q, "backing").Shared));
        var e = Assert.Throws<BlockException>(() => new BlockBackend("writer", b, W, BlockPermissions.All));
        Assert.Equal("Permission conflict on node '" + b.NodeName + "': permissions 'write' are both required by writer (uses node '" + b.NodeName +
            "' as 'root' child) and unshared by node 'q' (uses node '" + b.NodeName + "' as 'backing' child).", e.Message);
        reader.Release();
        Assert.Equal((BlockPermissions.None, BlockPermissions.All), (Edge(q, "backing").Permissions, Edge(q, "backing").Shared));

        // blockdev-del drops the node and the children opened with it, and their locks.
        await g.DeleteAsync("q");
        Assert.Equal("", Locks(top));
        Assert.Equal("", Locks(baseImg));
    }

    [Fact]
    public async Task A_failed_lock_deep_in_the_graph_rolls_the_whole_change_back()
    {
        using var dir = new TempDir("perm");
        string raw = Path.Combine(dir.Path, "r.raw"), top = Path.Combine(dir.Path, "top.qcow2");
        QemuImg("create", "-q", "-f", "raw", raw, "1M");
        QemuImg("create", "-q", "-f", "qcow2", "-b", raw, "-F", "raw", top);
        // Another holder of r.raw that lets nobody read it consistently (another open file description: as another process).
        await using var holder = FileStorage.Open(raw, new FileStorageOptions(ReadOnly: true));
        holder.Lock.Set(LockPermissions.None, LockPermissions.All & ~LockPermissions.ConsistentRead);

        await using var g = new BlockGraph();
        await g.AddAsync(Json($$$"""{"driver":"raw","node-name":"rb","file":{"driver":"file","filename":"{{{raw}}}"}}"""));
        var q = await g.AddAsync(Json($$$"""{"driver":"qcow2","node-name":"q","backing":"rb","file":{"driver":"file","filename":"{{{top}}}"}}"""));
        string before = Locks(top);

        // The reader's consistent-read reaches r.raw through the backing edge and raw's file: refused there.
        var e = Assert.Throws<BlockException>(() => new BlockBackend("reader", q, CR | W, BlockPermissions.All & ~RS));
        Assert.Equal("Failed to get \"consistent read\" lock", e.Message);
        Assert.Equal($"Is another process using the image [{raw}]?", e.Hint);
        Assert.Empty(q.Parents);
        Assert.Equal(BlockPermissions.None, Edge(q, "backing").Permissions);
        Assert.Equal(BlockPermissions.None, Edge(g.Get("rb"), "file").Permissions);
        Assert.Equal(before, Locks(top));
        Assert.Equal("200", Locks(raw)); // only the holder's

        // Once the holder shares reading again, the same reader gets in.
        holder.Lock.Set(LockPermissions.None, LockPermissions.All);
        var reader = new BlockBackend("reader", q, CR | W, BlockPermissions.All & ~RS);
        Assert.Equal("100", Locks(raw));
        reader.Release();
        Assert.Equal("", Locks(raw));
    }
}
