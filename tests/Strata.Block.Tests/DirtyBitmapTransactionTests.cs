using System.Text.Json.Nodes;
using Strata.Block.Bitmaps;
using Strata.Block.Transactions;
using Strata.Images.Bitmaps;
using Xunit;

namespace Strata.Block.Tests;

/// <summary>
/// Live dirty bitmaps through the C# API (no QMP): writes of every kind are recorded on any node, and a transaction of
/// bitmap actions is all or nothing (QEMU's abort: clear and merge get their old bits back, add is removed, remove
/// keeps the bitmap, enable/disable go back).
/// </summary>
public sealed class DirtyBitmapTransactionTests
{
    private static string Extents(DirtyBitmap b) =>
        string.Join(",", b.Extents().Where(e => e.Dirty).Select(e => $"{e.Offset}+{e.Length}"));

    [Fact]
    public async Task Writes_zeroes_and_discards_are_recorded_and_an_aborted_transaction_restores_every_bitmap()
    {
        await using var g = new BlockGraph();
        var node = await g.AddAsync(JsonNode.Parse("""{"driver":"null-co","node-name":"n0","size":1048576}""")!.AsObject());
        var backend = new BlockBackend("test", node, BlockPermissions.ConsistentRead | BlockPermissions.Write, BlockPermissions.All);
        var a = await NodeBitmaps.AddAsync(g, "n0", "a", 512);
        var b = await NodeBitmaps.AddAsync(g, "n0", "b", 4096, disabled: true);
        var c = await NodeBitmaps.AddAsync(g, "n0", "c");
        Assert.Equal(65536u, c.Granularity); // QEMU's default where the driver has no cluster size

        await backend.WriteAsync(new byte[1000], 1000);
        await backend.WriteZeroesAsync(200_000, 10);
        Assert.Equal("512+1536,199680+512", Extents(a));
        Assert.Equal("", Extents(b));
        Assert.Equal("0+65536,196608+65536", Extents(c));
        NodeBitmaps.Merge(g, "n0", "b", [new BitmapRef(null, "a")]);
        Assert.Equal("0+4096,196608+4096", Extents(b));

        string ha = NodeBitmaps.Sha256(a), hb = NodeBitmaps.Sha256(b), hc = NodeBitmaps.Sha256(c);
        var e = await Assert.ThrowsAsync<BitmapException>(async () => await BlockTransaction.RunAsync(g,
        [
            new DirtyBitmapClearAction("n0", "a"),
            new DirtyBitmapMergeAction("n0", "b", [new BitmapRef("n0", "c")]),
            new DirtyBitmapEnableAction("n0", "b", true),
            new DirtyBitmapEnableAction("n0", "c", false),
            new DirtyBitmapAddAction("n0", "d", null, false, false),
            new DirtyBitmapRemoveAction("n0", "c"),
            new DirtyBitmapClearAction("n0", "nope"),
        ]));
        Assert.Equal("Dirty bitmap 'nope' not found", e.Message);
        Assert.Equal((ha, hb, hc), (NodeBitmaps.Sha256(a), NodeBitmaps.Sha256(b), NodeBitmaps.Sha256(c)));
        Assert.Equal(["c", "b", "a"], node.DirtyBitmaps.All.Select(x => x.Name));
        Assert.True(a.Enabled && !b.Enabled && c.Enabled && !c.Busy);

        // Still recording after the rollback, and the same actions commit.
        await backend.WriteAsync(new byte[512], 512 * 1000);
        Assert.Contains("512000+512", Extents(a), StringComparison.Ordinal);
        await BlockTransaction.RunAsync(g,
        [
            new DirtyBitmapClearAction("n0", "a"),
            new DirtyBitmapMergeAction("n0", "b", [new BitmapRef("n0", "c")]),
            new DirtyBitmapAddAction("n0", "d", 1024, false, true),
            new DirtyBitmapRemoveAction("n0", "c"),
        ]);
        Assert.Equal("", Extents(a));
        Assert.Equal("0+65536,196608+65536,458752+65536", Extents(b));
        Assert.Equal(["d", "b", "a"], node.DirtyBitmaps.All.Select(x => x.Name));
        Assert.False(node.DirtyBitmaps.Find("d")!.Enabled);

        // Grouped completion is refused by every bitmap action, naming it.
        var grouped = new TransactionProperties { CompletionMode = ActionCompletionMode.Grouped };
        var g2 = await Assert.ThrowsAsync<BlockException>(async () =>
            await BlockTransaction.RunAsync(g, [new DirtyBitmapAddAction("n0", "e", null, false, false)], grouped));
        Assert.Equal("Action 'block-dirty-bitmap-add' does not support Transaction property completion-mode = grouped", g2.Message);
        Assert.Null(node.DirtyBitmaps.Find("e"));
        backend.Release();
    }

    [Fact]
    public async Task A_persistent_bitmap_leaves_the_file_when_removed_and_is_stored_at_close_otherwise()
    {
        using var dir = new TempDir("bitmap-tx");
        string img = Path.Combine(dir.Path, "d.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", img, "4M").EnsureSuccess();
        QemuTools.QemuImg("bitmap", "--add", img, "old").EnsureSuccess();
        JsonObject Options() => new() { ["driver"] = "qcow2", ["node-name"] = "d0", ["file"] = new JsonObject { ["driver"] = "file", ["filename"] = img } };

        string hash;
        var g = new BlockGraph();
        await using (g)
        {
            var node = await g.AddAsync(Options());
            var backend = new BlockBackend("test", node, BlockPermissions.ConsistentRead | BlockPermissions.Write, BlockPermissions.All);
            await NodeBitmaps.AddAsync(g, "d0", "p", 512, persistent: true);
            await backend.WriteAsync(new byte[3000], 70_000);

            // An aborted remove keeps "old" in memory; a committed one takes it out of the file at once.
            await Assert.ThrowsAsync<BlockException>(async () =>
                await BlockTransaction.RunAsync(g, [new DirtyBitmapRemoveAction("d0", "old"), new AbortAction()]));
            Assert.False(node.DirtyBitmaps.Find("old")!.Busy);
            await BlockTransaction.RunAsync(g, [new DirtyBitmapRemoveAction("d0", "old")]);
            Assert.Null(node.DirtyBitmaps.Find("old"));
            Assert.DoesNotContain("\"old\"", QemuTools.QemuImg("info", "-U", "--output=json", img).StdOut, StringComparison.Ordinal);
            hash = NodeBitmaps.Sha256(g, "d0", "p");
            backend.Release();
        }

        var info = QemuTools.QemuImg("info", "--output=json", img);
        Assert.Contains("\"name\": \"p\"", info.StdOut, StringComparison.Ordinal);
        Assert.DoesNotContain("\"old\"", info.StdOut, StringComparison.Ordinal);
        Assert.Equal(0, QemuTools.QemuImg("check", img).ExitCode);

        await using var again = new BlockGraph();
        await again.AddAsync(Options());
        Assert.Equal(hash, NodeBitmaps.Sha256(again, "d0", "p"));
        Assert.Equal(3584, again.Get("d0").DirtyBitmaps.Find("p")!.DirtyBytes);
    }
}
