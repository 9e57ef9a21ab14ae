using System.Buffers.Binary;
using System.Diagnostics;
using Strata.Images.Qcow2;
using Strata.Images.Storage;
using Strata.Testing;
using Xunit;

namespace Strata.Images.Tests.Qcow2;

/// <summary>
/// Crafted snapshot tables: every snapshot operation (list, view, apply, delete, create) either works or fails with
/// an <see cref="ImageException"/> naming the problem (one of the '|'-separated words), within seconds and without a huge allocation.
/// </summary>
[Collection(nameof(MalformedImageCollection))]
public sealed class MalformedSnapshotTableTests
{
    // The image: 64 KiB clusters, 1 MiB of data, snapshots "a" (ID 1) and "b" (ID 2) made by qemu-img.
    public static TheoryData<string, string> Cases() => new()
    {
        { "table offset past EOF", "snapshot" },
        { "table offset unaligned into header", "snapshot" },
        { "huge snapshot count", "Too many snapshots" },
        { "count larger than the table", "snapshot" },
        { "L1 past EOF", "Snapshot L1 table lies past the end" },
        { "L1 misaligned", "Snapshot L1 table offset invalid|overlap" },
        { "L1 size absurd", "Snapshot L1 table too large|overlap" },
        { "id and name length absurd", "snapshot" },
        { "extra data size absurd", "Too much extra metadata" },
        { "table overlaps the active L1", "overlap" },
        { "L1 of a snapshot is the header", "past the end|corrupt|overlap" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task CorruptTable_IsRefusedClearly(string name, string problem)
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("snapbad");
        string path = dir.Combine("bad.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", path, "4M").EnsureSuccess();
        QemuTools.QemuIo("-c", "write -P 1 0 1M", path).EnsureSuccess();
        QemuTools.QemuImg("snapshot", "-c", "a", path).EnsureSuccess();
        QemuTools.QemuImg("snapshot", "-c", "b", path).EnsureSuccess();
        var d = File.ReadAllBytes(path);
        long table = (long)BinaryPrimitives.ReadUInt64BigEndian(d.AsSpan(64));
        long l1 = BinaryPrimitives.ReadInt64BigEndian(d.AsSpan(40));
        void U32(long at, uint v) => BinaryPrimitives.WriteUInt32BigEndian(d.AsSpan((int)at), v);
        void U64(long at, ulong v) => BinaryPrimitives.WriteUInt64BigEndian(d.AsSpan((int)at), v);
        switch (name)
        {
            case "table offset past EOF": U64(64, 0x10000000); break;
            case "table offset unaligned into header": U64(64, 0x30); break;
            case "huge snapshot count": U32(60, 0x7fffffff); break;
            case "count larger than the table": U32(60, 60000); break;
            case "L1 past EOF": U64(table, 0x7000000); break;
            case "L1 misaligned": U64(table, (ulong)l1 + 8); break;
            case "L1 size absurd": U32(table + 8, 0x40000000); break;
            case "id and name length absurd": BinaryPrimitives.WriteUInt32BigEndian(d.AsSpan((int)table + 12), 0xffffffff); break;
            case "extra data size absurd": U32(table + 36, 0xfffffff0); break;
            case "table overlaps the active L1": U64(64, (ulong)l1); break;
            case "L1 of a snapshot is the header": U64(table, 0); break;
        }
        File.WriteAllBytes(path, d);

        long before = GC.GetTotalAllocatedBytes(precise: true);
        var sw = Stopwatch.StartNew();
        var failures = new List<string>();
        async Task Try(string what, Func<Qcow2Image, Task> act)
        {
            try
            {
                await using var img = await Qcow2Image.OpenAsync(FileStorage.Open(path, FileStorageOptions.Default));
                await act(img);
            }
            catch (ImageException e)
            {
                failures.Add(e.Message);
            }
            catch (Exception e)
            {
                Assert.Fail($"{name}: {what} threw {e.GetType().Name}: {e.Message}");
            }
        }
        await Try("list", async i => await i.GetSnapshotsAsync());
        await Try("view", async i => { await using var v = await i.OpenSnapshotAsync("1", null); await v.ReadAsync(new byte[1 << 20], 0); });
        await Try("apply", async i => await i.ApplySnapshotAsync("1"));
        await Try("delete", async i => await i.DeleteSnapshotAsync("2", null));
        await Try("create", async i => await i.CreateSnapshotAsync(new Qcow2SnapshotCreateInfo { Name = "c" }));
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(20), $"{name}: took {sw.Elapsed}");
        Assert.True(GC.GetTotalAllocatedBytes(precise: true) - before < 200L << 20, $"{name}: allocated too much");
        Assert.True(failures.Count > 0, $"{name}: every operation succeeded on a broken table");
        Assert.All(failures, m => Assert.True(problem.Split('|').Any(p => m.Contains(p, StringComparison.OrdinalIgnoreCase)), $"{name}: '{m}' does not name the problem '{problem}'"));
    }
}
