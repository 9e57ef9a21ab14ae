using System.Text.Json;
using System.Text.Json.Nodes;
using Strata.Block.Snapshots;
using Strata.Block.Transactions;
using Xunit;

namespace Strata.Block.Tests;

/// <summary>Transactions and external snapshots through the C# API (no QMP): the undo log's order, all-or-nothing, relative-paths.</summary>
public sealed class SnapshotTransactionTests
{
    private sealed class Recording(string name, List<string> log, bool fail) : ITransactionAction
    {
        public string Kind => "test";

        public ValueTask PrepareAsync(BlockTransaction transaction, CancellationToken ct)
        {
            log.Add("prepare " + name);
            transaction.Register(
                commit: () => log.Add("commit " + name),
                abort: () => { log.Add("abort " + name); return ValueTask.CompletedTask; },
                clean: () => { log.Add("clean " + name); return ValueTask.CompletedTask; });
            return fail ? throw new BlockException("failed " + name) : ValueTask.CompletedTask;
        }
    }

    private static string Qcow2Options(string node, string file) =>
        new JsonObject { ["driver"] = "qcow2", ["node-name"] = node, ["file"] = new JsonObject { ["driver"] = "file", ["filename"] = file } }.ToJsonString();

    [Fact]
    public async Task Commits_run_in_order_aborts_in_reverse_and_clean_always()
    {
        await using var g = new BlockGraph();
        var log = new List<string>();
        await BlockTransaction.RunAsync(g, [new Recording("1", log, false), new Recording("2", log, false)]);
        Assert.Equal(["prepare 1", "prepare 2", "commit 1", "commit 2", "clean 1", "clean 2"], log);

        log.Clear();
        var e = await Assert.ThrowsAsync<BlockException>(async () =>
            await BlockTransaction.RunAsync(g, [new Recording("1", log, false), new Recording("2", log, true), new Recording("3", log, false)]));
        Assert.Equal("failed 2", e.Message);
        Assert.Equal(["prepare 1", "prepare 2", "abort 2", "abort 1", "clean 1", "clean 2"], log);
    }

    [Fact]
    public async Task A_failed_transaction_leaves_disks_on_their_images_and_removes_only_the_files_it_created()
    {
        using var dir = new TempDir("snap");
        var g = new BlockGraph();
        await using (g)
        {
            var backends = new List<BlockBackend>();
            for (int i = 0; i < 3; i++)
            {
                string img = Path.Combine(dir.Path, $"d{i}.qcow2");
                QemuTools.QemuImg("create", "-q", "-f", "qcow2", img, "1M").EnsureSuccess();
                var node = await g.AddAsync(JsonNode.Parse(
                    Qcow2Options($"d{i}", img))!.AsObject());
                backends.Add(new BlockBackend("test", node, BlockPermissions.ConsistentRead | BlockPermissions.Write, BlockPermissions.All));
            }

            string existing = Path.Combine(dir.Path, "existing.qcow2");
            File.WriteAllText(existing, "made by someone else");
            int nodes = g.Nodes.Count;
            var e = await Assert.ThrowsAsync<BlockException>(async () => await BlockTransaction.RunAsync(g,
            [
                new ExternalSnapshotAction(new SnapshotSyncRequest(null, "d0", Path.Combine(dir.Path, "new.qcow2"), "s0")),
                new ExternalSnapshotAction(new SnapshotSyncRequest(null, "d1", existing, "s1")),
                new ExternalSnapshotAction(new SnapshotSyncRequest(null, "d2", Path.Combine(dir.Path, "missing.qcow2"), "s2", Mode: NewImageMode.Existing)),
            ]));
            Assert.Equal($"Could not open '{Path.Combine(dir.Path, "missing.qcow2")}': No such file or directory", e.Message);
            Assert.Equal(["d0", "d1", "d2"], backends.Select(b => b.Root.NodeName));
            Assert.Equal(nodes, g.Nodes.Count);
            Assert.All(g.Nodes, n => Assert.False(n.IsReadOnly, $"{n.NodeName} became read-only"));
            Assert.False(File.Exists(Path.Combine(dir.Path, "new.qcow2")));
            Assert.True(File.Exists(existing));

            // The same transaction without the fault: every backend follows its overlay, the old tops are read-only backings.
            await BlockTransaction.RunAsync(g,
            [
                new ExternalSnapshotAction(new SnapshotSyncRequest(null, "d0", Path.Combine(dir.Path, "new.qcow2"), "s0")),
                new ExternalSnapshotAction(new SnapshotSyncRequest(null, "d1", existing, "s1")),
                new ExternalSnapshotAction(new SnapshotSyncRequest(null, "d2", Path.Combine(dir.Path, "s2.qcow2"), "s2")),
            ]);
            Assert.Equal(["s0", "s1", "s2"], backends.Select(b => b.Root.NodeName));
            for (int i = 0; i < 3; i++)
            {
                Assert.Same(g.Find($"d{i}"), backends[i].Root.BackingChild);
                Assert.True(g.Find($"d{i}")!.IsReadOnly);
            }

            foreach (var b in backends)
                b.Release();
        }

        foreach (var f in Directory.GetFiles(dir.Path, "*.qcow2"))
            QemuTools.QemuImg("check", "-q", f).EnsureSuccess();
    }

    [Fact]
    public async Task Relative_paths_record_the_backing_relative_to_the_overlay()
    {
        using var dir = new TempDir("snap");
        string img = Path.Combine(dir.Path, "base.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", img, "1M").EnsureSuccess();
        QemuTools.QemuIo("-f", "qcow2", "-c", "write -P 7 0 64k", img).EnsureSuccess();
        Directory.CreateDirectory(Path.Combine(dir.Path, "sub"));
        string overlay = Path.Combine(dir.Path, "sub", "top.qcow2");
        await using (var g = new BlockGraph())
        {
            var node = await g.AddAsync(JsonNode.Parse(
                Qcow2Options("d0", img))!.AsObject());
            var backend = new BlockBackend("test", node, BlockPermissions.ConsistentRead | BlockPermissions.Write, BlockPermissions.All);
            await BlockTransaction.RunAsync(g, [new ExternalSnapshotAction(
                new SnapshotSyncRequest(null, "d0", overlay, "s0", Mode: NewImageMode.RelativePaths))]);
            await backend.WriteAsync(new byte[4096], 0);
            backend.Release();
        }

        var info = QemuTools.QemuImg("info", "--output=json", overlay).EnsureSuccess().StdOut;
        using var doc = JsonDocument.Parse(info);
        Assert.Equal("../base.qcow2", doc.RootElement.GetProperty("backing-filename").GetString());
        Assert.Equal("qcow2", doc.RootElement.GetProperty("backing-filename-format").GetString());
        // Moved as a whole, the chain still opens and reads the same.
        string moved = Path.Combine(dir.Path, "moved");
        Directory.CreateDirectory(Path.Combine(moved, "sub"));
        File.Move(img, Path.Combine(moved, "base.qcow2"));
        File.Move(overlay, Path.Combine(moved, "sub", "top.qcow2"));
        QemuTools.QemuIo("-f", "qcow2", "-c", "read -P 0 0 4k", "-c", "read -P 7 4k 60k", Path.Combine(moved, "sub", "top.qcow2")).EnsureSuccess();
        QemuTools.QemuImg("check", "-q", Path.Combine(moved, "sub", "top.qcow2")).EnsureSuccess();
    }
}
