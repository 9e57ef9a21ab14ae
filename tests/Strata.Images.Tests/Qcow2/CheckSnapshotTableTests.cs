using System.Buffers.Binary;
using System.Text;
using Strata.Images.Qcow2;
using Strata.Images.Storage;
using Xunit;

namespace Strata.Images.Tests.Qcow2;

/// <summary>Reading and writing the snapshot table (qcow2.md §7) with QEMU 7.2's layout and limits.</summary>
public sealed class CheckSnapshotTableTests
{
    private static Qcow2Snapshot Sample(int i) => new()
    {
        L1TableOffset = 0x30000UL + (ulong)i * 0x10000,
        L1Size = 2,
        Id = (i + 1).ToString(System.Globalization.CultureInfo.InvariantCulture),
        Name = "snap-" + new string('x', i * 7),
        DateSeconds = 1_700_000_000u + (uint)i,
        DateNanoseconds = 123u,
        VmClockNanoseconds = 42UL * (ulong)i,
        VmStateSize = i == 2 ? 1UL << 33 : (ulong)i * 512,
        DiskSize = 64UL << 20,
        Icount = i == 1 ? 7UL : ulong.MaxValue,
        UnknownExtraData = i == 1 ? [1, 2, 3, 4, 5, 6, 7, 8, 9] : [],
    };

    [Fact]
    public async Task SerializeThenRead_RoundTripsEveryField()
    {
        using var dir = new TempDir("snap");
        var snaps = Enumerable.Range(0, 4).Select(Sample).ToList();
        var table = SnapshotTable.Serialize(snaps);
        Assert.Equal(SnapshotTable.SerializedSize(snaps), table.Length);

        string path = dir.Combine("t.bin");
        await File.WriteAllBytesAsync(path, [.. new byte[65536], .. table]);
        await using var file = FileStorage.Open(path, new FileStorageOptions(ReadOnly: true));
        var r = await SnapshotTable.ReadAsync(file, 65536, snaps.Count, 1L << 30);
        Assert.Equal(table.Length, r.Size);
        Assert.Equal(0, r.Discarded);
        for (int i = 0; i < snaps.Count; i++)
        {
            var a = snaps[i];
            var b = r.Snapshots[i];
            Assert.Equal(a.L1TableOffset, b.L1TableOffset);
            Assert.Equal(a.L1Size, b.L1Size);
            Assert.Equal(a.Id, b.Id);
            Assert.Equal(a.Name, b.Name);
            Assert.Equal(a.DateSeconds, b.DateSeconds);
            Assert.Equal(a.DateNanoseconds, b.DateNanoseconds);
            Assert.Equal(a.VmClockNanoseconds, b.VmClockNanoseconds);
            Assert.Equal(a.VmStateSize, b.VmStateSize);
            Assert.Equal(a.DiskSize, b.DiskSize);
            Assert.Equal(a.Icount, b.Icount);
            Assert.Equal(a.UnknownExtraData, b.UnknownExtraData);
            Assert.Equal((uint)(24 + a.UnknownExtraData.Length), b.ExtraDataSize);
        }
        // Written again, the table is the same bytes.
        Assert.Equal(table, SnapshotTable.Serialize(r.Snapshots));
    }

    [Fact]
    public void Serialize_LaysEntriesOutAsQemu()
    {
        var sn = new Qcow2Snapshot { L1TableOffset = 0x50000, L1Size = 1, Id = "1", Name = "first", DateSeconds = 5, VmStateSize = 1UL << 32, DiskSize = 1 << 20, Icount = ulong.MaxValue };
        var t = SnapshotTable.Serialize([sn, sn]);
        // 40-byte header + 24 bytes of extra data + "1" + "first" = 70; the second entry starts at 72.
        Assert.Equal(72 + 70, t.Length);
        Assert.Equal(0x50000UL, BinaryPrimitives.ReadUInt64BigEndian(t));
        Assert.Equal(1, BinaryPrimitives.ReadUInt16BigEndian(t.AsSpan(12)));
        Assert.Equal(5, BinaryPrimitives.ReadUInt16BigEndian(t.AsSpan(14)));
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(t.AsSpan(32))); // does not fit in 32 bits
        Assert.Equal(24u, BinaryPrimitives.ReadUInt32BigEndian(t.AsSpan(36)));
        Assert.Equal(1UL << 32, BinaryPrimitives.ReadUInt64BigEndian(t.AsSpan(40)));
        Assert.Equal(ulong.MaxValue, BinaryPrimitives.ReadUInt64BigEndian(t.AsSpan(56)));
        Assert.Equal("1first", Encoding.ASCII.GetString(t, 64, 6));
        Assert.Equal(0x50000UL, BinaryPrimitives.ReadUInt64BigEndian(t.AsSpan(72)));
    }

    [Fact]
    public async Task ShortExtraData_DefaultsAsQemu()
    {
        using var dir = new TempDir("snap");
        // A v2-style entry: no extra data at all.
        var e = new byte[40 + 2];
        BinaryPrimitives.WriteUInt64BigEndian(e, 0x40000);
        BinaryPrimitives.WriteUInt32BigEndian(e.AsSpan(8), 3);
        BinaryPrimitives.WriteUInt16BigEndian(e.AsSpan(12), 1);
        BinaryPrimitives.WriteUInt16BigEndian(e.AsSpan(14), 1);
        BinaryPrimitives.WriteUInt32BigEndian(e.AsSpan(32), 4096);
        e[40] = (byte)'7';
        e[41] = (byte)'n';
        string path = dir.Combine("t.bin");
        await File.WriteAllBytesAsync(path, [.. new byte[512], .. e]);
        await using var file = FileStorage.Open(path, new FileStorageOptions(ReadOnly: true));
        var r = await SnapshotTable.ReadAsync(file, 512, 1, 12345 * 512);
        var sn = Assert.Single(r.Snapshots);
        Assert.Equal(4096UL, sn.VmStateSize);
        Assert.Equal(12345UL * 512, sn.DiskSize);
        Assert.Equal(ulong.MaxValue, sn.Icount);
        Assert.Equal(0u, sn.ExtraDataSize);
        Assert.Equal("7", sn.Id);
        Assert.Equal("n", sn.Name);
        Assert.Equal(42, r.Size);
    }

    [Fact]
    public async Task TooMuchExtraData_IsRefused_OrCutWhenRepairing()
    {
        using var dir = new TempDir("snap");
        var sn = Sample(0);
        sn.UnknownExtraData = new byte[2000 - 24];
        sn.UnknownExtraData[0] = 0xEE;
        var table = SnapshotTable.Serialize([sn, Sample(1)]);
        string path = dir.Combine("t.bin");
        await File.WriteAllBytesAsync(path, [.. new byte[512], .. table]);
        await using var file = FileStorage.Open(path, new FileStorageOptions(ReadOnly: true));

        var ex = await Assert.ThrowsAsync<CorruptImageException>(() => SnapshotTable.ReadAsync(file, 512, 2, 1 << 20).AsTask());
        Assert.Contains("Too much extra metadata in snapshot table entry 0", ex.Message, StringComparison.Ordinal);

        var reports = new List<string>();
        var r = await SnapshotTable.ReadAsync(file, 512, 2, 1 << 20, repair: true, reports.Add);
        Assert.Equal(1, r.ExtraDataTruncated);
        Assert.Equal(["Discarding too much extra metadata in snapshot table entry 0 (2000 > 1024)"], reports);
        Assert.Equal(1024u, r.Snapshots[0].ExtraDataSize);
        Assert.Equal(1000, r.Snapshots[0].UnknownExtraData.Length);
        Assert.Equal(0xEE, r.Snapshots[0].UnknownExtraData[0]);
        Assert.Equal(Sample(1).Name, r.Snapshots[1].Name);
        Assert.Equal(table.Length, r.Size); // what the table occupies on disk
    }

    [Fact]
    public async Task TableOver64MiB_IsRefused_OrCutWhenRepairing()
    {
        using var dir = new TempDir("snap");
        // 1100 entries with 64 KiB names (u16 maximum): about 72 MiB.
        var big = new Qcow2Snapshot { L1TableOffset = 0x10000, Id = "1", NameBytes = new byte[65535] };
        Array.Fill(big.NameBytes, (byte)'n');
        var one = SnapshotTable.Serialize([big]);
        string path = dir.Combine("t.bin");
        const int count = 1100;
        await using (var f = File.Create(path))
        {
            f.Write(new byte[512]);
            for (int i = 0; i < count; i++)
            {
                f.Write(one);
                f.Write(new byte[(8 - one.Length % 8) % 8]);
            }
        }
        await using var file = FileStorage.Open(path, new FileStorageOptions(ReadOnly: true));
        var ex = await Assert.ThrowsAsync<CorruptImageException>(() => SnapshotTable.ReadAsync(file, 512, count, 1 << 20).AsTask());
        Assert.Contains("Snapshot table is too big", ex.Message, StringComparison.Ordinal);

        var reports = new List<string>();
        var r = await SnapshotTable.ReadAsync(file, 512, count, 1 << 20, repair: true, reports.Add);
        Assert.True(r.Snapshots.Count is > 900 and < count);
        Assert.Equal(count - r.Snapshots.Count, r.Discarded);
        Assert.Equal([$"Discarding {r.Discarded} overhanging snapshots (snapshot table is too big)"], reports);
        Assert.True(r.Size <= 64L << 20);
    }

    [Fact]
    public async Task TooManySnapshots_IsRefused()
    {
        await using var file = new NullStorage(1 << 20);
        await Assert.ThrowsAsync<CorruptImageException>(() => SnapshotTable.ReadAsync(file, 65536, 65537, 0).AsTask());
        var r = await SnapshotTable.ReadAsync(file, 0, 0, 0);
        Assert.Empty(r.Snapshots);
    }
}
