using System.Text.Json.Nodes;
using Strata.Block.Drivers;
using Xunit;

namespace Strata.Block.Tests;

/// <summary>blockdev-add / blockdev-del semantics of the graph, with QEMU's messages.</summary>
public sealed class BlockGraphTests
{
    private static void QemuImg(params string[] args) => QemuTools.QemuImg(args).EnsureSuccess();

    private static JsonObject Json(string s) => JsonNode.Parse(s)!.AsObject();

    [Fact]
    public async Task FileAndQcow2Nodes_OpenAndRead()
    {
        using var dir = new TempDir("graph");
        string img = Path.Combine(dir.Path, "d.qcow2");
        QemuImg("create", "-q", "-f", "qcow2", img, "16M");
        await using var g = new BlockGraph();
        await g.AddAsync(Json($$"""{"driver":"file","node-name":"f1","filename":"{{img}}"}"""));
        var d = await g.AddAsync(Json("""{"driver":"qcow2","node-name":"d1","file":"f1"}"""));
        Assert.Equal(16L << 20, d.Size);
        Assert.Equal("qcow2", d.Driver);
        Assert.Same(g.Find("f1"), d.FileChild);
    }

    [Fact]
    public async Task SecondFormatNodeOnTheSameFile_IsAPermissionConflict()
    {
        using var dir = new TempDir("graph");
        string img = Path.Combine(dir.Path, "d.qcow2");
        QemuImg("create", "-q", "-f", "qcow2", img, "16M");
        await using var g = new BlockGraph();
        await g.AddAsync(Json($$"""{"driver":"file","node-name":"f1","filename":"{{img}}"}"""));
        await g.AddAsync(Json("""{"driver":"qcow2","node-name":"d1","file":"f1"}"""));
        var e = await Assert.ThrowsAsync<BlockException>(async () => await g.AddAsync(Json("""{"driver":"qcow2","node-name":"d2","file":"f1"}""")));
        Assert.Equal("Permission conflict on node 'f1': permissions 'write, resize' are both required by node 'd1' (uses node 'f1' as 'file' child) and unshared by node 'd2' (uses node 'f1' as 'file' child).", e.Message);
        Assert.Null(g.Find("d2"));
    }

    [Fact]
    public async Task Errors_UseQemuWording()
    {
        using var dir = new TempDir("graph");
        string img = Path.Combine(dir.Path, "d.qcow2");
        QemuImg("create", "-q", "-f", "qcow2", img, "16M");
        await using var g = new BlockGraph();
        async Task<string> Fails(string json) => (await Assert.ThrowsAsync<BlockException>(async () => await g.AddAsync(Json(json)))).Message;
        Assert.Equal("'node-name' must be specified for the root node", await Fails($$"""{"driver":"file","filename":"{{img}}"}"""));
        Assert.Equal($"Could not open '{dir.Path}/none.qcow2': No such file or directory", await Fails($$"""{"driver":"file","node-name":"x","filename":"{{dir.Path}}/none.qcow2"}"""));
        Assert.Equal("Parameter 'driver' does not accept value 'foo'", await Fails("""{"driver":"foo","node-name":"x"}"""));
        Assert.Equal("Cannot find device='nope' nor node-name='nope'", await Fails("""{"driver":"qcow2","node-name":"x","file":"nope"}"""));
        await g.AddAsync(Json($$"""{"driver":"file","node-name":"f1","filename":"{{img}}"}"""));
        Assert.Equal("Duplicate nodes with node-name='f1'", await Fails($$"""{"driver":"file","node-name":"f1","filename":"{{img}}"}"""));
        await g.AddAsync(Json("""{"driver":"qcow2","node-name":"d1","file":"f1"}"""));
        var del = await Assert.ThrowsAsync<BlockException>(async () => await g.DeleteAsync("f1"));
        Assert.Equal("Block device f1 is in use", del.Message);
        del = await Assert.ThrowsAsync<BlockException>(async () => await g.DeleteAsync("nope"));
        Assert.Equal("Failed to find node with node-name='nope'", del.Message);
        await g.DeleteAsync("d1");
        await g.DeleteAsync("f1");
        Assert.Empty(g.Nodes);
    }

    [Fact]
    public async Task BackingChainFromTheHeader_OpensAsAutoNamedReadOnlyNodes()
    {
        using var dir = new TempDir("graph");
        string b = Path.Combine(dir.Path, "base.qcow2"), t = Path.Combine(dir.Path, "top.qcow2");
        QemuImg("create", "-q", "-f", "qcow2", b, "16M");
        QemuImg("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", t);
        await using var g = new BlockGraph();
        var top = await g.AddAsync(Json($$$"""{"driver":"qcow2","node-name":"top","file":{"driver":"file","filename":"{{{t}}}"}}"""));
        var backing = Assert.IsType<Qcow2Node>(top.BackingChild);
        Assert.True(backing.IsAutoNamed);
        Assert.True(backing.IsReadOnly);
        Assert.Equal(b, backing.FileName);
        Assert.Equal(4, g.Nodes.Count);
        await g.DeleteAsync("top");
        Assert.Empty(g.Nodes); // implicit children go with their parent
    }

    [Fact]
    public async Task Drain_HoldsNewRequestsUntilReleased()
    {
        await using var g = new BlockGraph();
        var n = await g.AddAsync(Json("""{"driver":"null-co","node-name":"n","size":1048576,"read-zeroes":true}"""));
        var be = new BlockBackend("export 'e'", n, BlockPermissions.ConsistentRead | BlockPermissions.Write, BlockPermissions.All);
        var drain = await be.DrainAsync();
        var read = be.ReadAsync(new byte[512], 0).AsTask();
        await Task.Delay(50);
        Assert.False(read.IsCompleted);
        await drain.DisposeAsync();
        await read.WaitAsync(TimeSpan.FromSeconds(5));
        be.Release();
    }
}
