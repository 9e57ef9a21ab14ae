using System.Buffers.Binary;
using System.Text.Json;
using Strata.Images.Qcow2;
using Strata.Images.Storage;
using Strata.Interop.Tests.Oracle;
using Xunit;

namespace Strata.Interop.Tests.Qcow2;

/// <summary>What one checker reported, in qemu-img check --output=json's terms, plus its stderr lines.</summary>
internal sealed record CheckReport(
    int ExitCode,
    long Corruptions,
    long Leaks,
    long CheckErrors,
    long CorruptionsFixed,
    long LeaksFixed,
    long ImageEndOffset,
    long TotalClusters,
    long AllocatedClusters,
    long FragmentedClusters,
    long CompressedClusters,
    IReadOnlyList<string> Messages)
{
    public string Counts =>
        $"exit={ExitCode} corruptions={Corruptions} leaks={Leaks} check-errors={CheckErrors} corruptions-fixed={CorruptionsFixed} " +
        $"leaks-fixed={LeaksFixed} image-end-offset={ImageEndOffset} total={TotalClusters} allocated={AllocatedClusters} " +
        $"fragmented={FragmentedClusters} compressed={CompressedClusters}";

    public override string ToString() => Counts + Environment.NewLine + string.Join(Environment.NewLine, Messages);
}

/// <summary>Runs qemu-img check and Strata's checker the same way, and reads and patches qcow2 metadata.</summary>
internal static class CheckSupport
{
    /// <summary>qemu-img check --output=json [-r mode]: the counts of the pass it reports and everything it printed to stderr.</summary>
    public static CheckReport QemuCheck(string path, Qcow2RepairMode mode = Qcow2RepairMode.None)
    {
        var args = new List<string> { "check", "--output=json" };
        if (mode != Qcow2RepairMode.None)
            args.AddRange(["-r", mode == Qcow2RepairMode.All ? "all" : "leaks"]);
        args.Add(path);
        var r = QemuTools.QemuImg([.. args]);
        var lines = Lines(r.StdErr).Where(l => !l.StartsWith("qemu-img: Check failed", StringComparison.Ordinal)).ToList();
        long Get(JsonElement root, string name) => root.TryGetProperty(name, out var v) ? v.GetInt64() : 0;
        if (r.StdOut.Trim().Length == 0)
            return new CheckReport(r.ExitCode, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, lines);
        using var doc = JsonDocument.Parse(r.StdOut);
        var j = doc.RootElement;
        return new CheckReport(r.ExitCode, Get(j, "corruptions"), Get(j, "leaks"), Get(j, "check-errors"),
            Get(j, "corruptions-fixed"), Get(j, "leaks-fixed"), Get(j, "image-end-offset"), Get(j, "total-clusters"),
            Get(j, "allocated-clusters"), Get(j, "fragmented-clusters"), Get(j, "compressed-clusters"), lines);
    }

    /// <summary>
    /// Strata's check as qemu-img runs it: one pass (repairing per <paramref name="mode"/>), then, when something
    /// was fixed, a second pass without repairs whose counts are reported with the first pass's fixed counts.
    /// </summary>
    public static async Task<CheckReport> StrataCheck(string path, Qcow2RepairMode mode = Qcow2RepairMode.None)
    {
        var storage = FileStorage.Open(path, new FileStorageOptions(ReadOnly: mode == Qcow2RepairMode.None));
        await using var img = await Qcow2Image.OpenAsync(storage, new Qcow2OpenOptions { ForCheck = true });
        var first = await Qcow2Check.CheckAsync(img, mode);
        var messages = first.Messages.ToList();
        var shown = first;
        if (first.Failure == null && first.AnythingFixed)
        {
            shown = await Qcow2Check.CheckAsync(img, Qcow2RepairMode.None);
            messages.AddRange(shown.Messages);
        }
        if (first.Failure != null)
            return new CheckReport(1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, messages);
        return new CheckReport(shown.ExitCode, shown.Corruptions, shown.Leaks, shown.CheckErrors,
            first.CorruptionsFixed, first.LeaksFixed, shown.ImageEndOffset, shown.TotalClusters,
            shown.AllocatedClusters, shown.FragmentedClusters, shown.CompressedClusters, messages);
    }

    /// <summary>Both checkers on identical copies of <paramref name="path"/>; asserts the same counts and stderr lines.</summary>
    public static async Task<(string Theirs, string Ours)> AssertSameCheck(string path, Qcow2RepairMode mode, string tag, string context = "")
    {
        string theirs = path + $".{tag}.qemu", ours = path + $".{tag}.strata";
        File.Copy(path, theirs, overwrite: true);
        File.Copy(path, ours, overwrite: true);
        var q = QemuCheck(theirs, mode);
        var s = await StrataCheck(ours, mode);
        Assert.True(q.Counts == s.Counts, $"[{tag}] {context} counts differ\nqemu-img: {q}\nstrata:   {s}");
        Assert.True(q.Messages.SequenceEqual(s.Messages), $"[{tag}] {context} messages differ\nqemu-img: {q}\nstrata:   {s}");
        return (theirs, ours);
    }

    /// <summary>Files identical byte for byte (holes read as zeroes), else the first difference.</summary>
    public static void AssertSameBytes(string a, string b, string context = "")
    {
        var x = File.ReadAllBytes(a);
        var y = File.ReadAllBytes(b);
        int n = Math.Min(x.Length, y.Length);
        for (int i = 0; i < n; i++)
            if (x[i] != y[i])
                Assert.Fail($"{Path.GetFileName(a)} and {Path.GetFileName(b)} first differ at 0x{i:x} {context}");
        Assert.True(x.Length == y.Length, $"lengths differ: {x.Length} vs {y.Length} {context}");
    }

    private static List<string> Lines(string s) =>
        s.Replace("\r", "", StringComparison.Ordinal).Split('\n').Where(l => l.Length > 0).ToList();
}

/// <summary>Reads and patches the metadata of a qcow2 file directly (to corrupt images on purpose).</summary>
internal sealed class RawQcow2
{
    private readonly string _path;

    public RawQcow2(string path)
    {
        _path = path;
        var h = new byte[112];
        using (var f = File.OpenRead(path))
            f.ReadExactly(h, 0, 104);
        ClusterBits = (int)BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(20));
        L1Size = (int)BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(36));
        L1Offset = (long)BinaryPrimitives.ReadUInt64BigEndian(h.AsSpan(40));
        RefTableOffset = (long)BinaryPrimitives.ReadUInt64BigEndian(h.AsSpan(48));
        int version = (int)BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(4));
        Incompatible = version >= 3 ? BinaryPrimitives.ReadUInt64BigEndian(h.AsSpan(72)) : 0;
        RefcountOrder = version >= 3 ? (int)BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(96)) : 4;
    }

    public int ClusterBits { get; }
    public int ClusterSize => 1 << ClusterBits;
    public int RefcountOrder { get; }
    public int L1Size { get; }
    public long L1Offset { get; }
    public long RefTableOffset { get; }
    public ulong Incompatible { get; }
    public bool ExtendedL2 => (Incompatible & 16) != 0;
    private int EntrySize => ExtendedL2 ? 16 : 8;
    private long RefsPerBlock => (long)ClusterSize * 8 >> RefcountOrder;

    public ulong ReadU64(long offset)
    {
        var b = new byte[8];
        using var f = File.OpenRead(_path);
        f.Seek(offset, SeekOrigin.Begin);
        f.ReadExactly(b);
        return BinaryPrimitives.ReadUInt64BigEndian(b);
    }

    public void WriteU64(long offset, ulong value)
    {
        var b = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(b, value);
        using var f = File.OpenWrite(_path);
        f.Seek(offset, SeekOrigin.Begin);
        f.Write(b);
    }

    public long L1EntryOffset(int index) => L1Offset + index * 8L;

    /// <summary>The bitmap directory, the first bitmap's table and its first data cluster (0 when none).</summary>
    public (long Directory, long Table, long Data) FirstBitmap()
    {
        var c0 = ReadBytes(0, ClusterSize);
        int pos = (int)BinaryPrimitives.ReadUInt32BigEndian(c0.AsSpan(100));
        while (pos + 8 <= c0.Length)
        {
            uint type = BinaryPrimitives.ReadUInt32BigEndian(c0.AsSpan(pos));
            int len = (int)BinaryPrimitives.ReadUInt32BigEndian(c0.AsSpan(pos + 4));
            if (type == 0)
                break;
            if (type == 0x23852875)
            {
                long dir = (long)BinaryPrimitives.ReadUInt64BigEndian(c0.AsSpan(pos + 8 + 16));
                long table = (long)ReadU64(dir);
                long data = (long)(ReadU64(table) & 0x00fffffffffffe00UL);
                return (dir, table, data);
            }
            pos += 8 + ((len + 7) & ~7);
        }
        throw new InvalidOperationException("no bitmaps extension");
    }

    /// <summary>File offset of the L2 entry mapping <paramref name="guestOffset"/> (its L2 table must exist).</summary>
    public long L2EntryOffset(long guestOffset)
    {
        long l2Entries = ClusterSize / EntrySize;
        long cluster = guestOffset >> ClusterBits;
        long l2 = (long)(ReadU64(L1EntryOffset((int)(cluster / l2Entries))) & 0x00fffffffffffe00UL);
        Assert.NotEqual(0, l2);
        return l2 + cluster % l2Entries * EntrySize;
    }

    /// <summary>Host cluster index of the data at <paramref name="guestOffset"/> (normal clusters only).</summary>
    public long HostCluster(long guestOffset) => (long)(ReadU64(L2EntryOffset(guestOffset)) & 0x00fffffffffffe00UL) >> ClusterBits;

    public ulong GetRefcount(long cluster)
    {
        var (off, bit) = RefcountPosition(cluster);
        var b = ReadBytes(off, 8);
        return RefcountOrder switch
        {
            6 => BinaryPrimitives.ReadUInt64BigEndian(b),
            5 => BinaryPrimitives.ReadUInt32BigEndian(b),
            4 => BinaryPrimitives.ReadUInt16BigEndian(b),
            3 => b[0],
            _ => (ulong)((b[0] >> bit) & ((1 << (1 << RefcountOrder)) - 1)),
        };
    }

    public void SetRefcount(long cluster, ulong value)
    {
        var (off, bit) = RefcountPosition(cluster);
        var b = ReadBytes(off, 8);
        switch (RefcountOrder)
        {
            case 6: BinaryPrimitives.WriteUInt64BigEndian(b, value); break;
            case 5: BinaryPrimitives.WriteUInt32BigEndian(b, (uint)value); break;
            case 4: BinaryPrimitives.WriteUInt16BigEndian(b, (ushort)value); break;
            case 3: b[0] = (byte)value; break;
            default:
                int mask = ((1 << (1 << RefcountOrder)) - 1) << bit;
                b[0] = (byte)((b[0] & ~mask) | (((int)value << bit) & mask));
                break;
        }
        using var f = File.OpenWrite(_path);
        f.Seek(off, SeekOrigin.Begin);
        f.Write(b, 0, Math.Max(1, (1 << RefcountOrder) / 8));
    }

    /// <summary>
    /// Rewrites the snapshot table in place with entry <paramref name="index"/>'s extra data resized to
    /// <paramref name="extraSize"/> bytes (zero padded or cut) and its L1 offset moved by <paramref name="l1Delta"/>.
    /// </summary>
    public void RewriteSnapshotEntry(int index, int extraSize, long l1Delta = 0)
    {
        var d = File.ReadAllBytes(_path);
        int nb = (int)BinaryPrimitives.ReadUInt32BigEndian(d.AsSpan(60));
        int off = (int)BinaryPrimitives.ReadUInt64BigEndian(d.AsSpan(64));
        var entries = new List<(byte[] Head, byte[] Extra, byte[] Id, byte[] Name)>();
        int pos = off;
        for (int i = 0; i < nb; i++)
        {
            pos = (pos + 7) & ~7;
            var head = d.AsSpan(pos, 40).ToArray();
            pos += 40;
            int ids = BinaryPrimitives.ReadUInt16BigEndian(head.AsSpan(12)), ns = BinaryPrimitives.ReadUInt16BigEndian(head.AsSpan(14));
            int ex = (int)BinaryPrimitives.ReadUInt32BigEndian(head.AsSpan(36));
            var extra = d.AsSpan(pos, ex).ToArray();
            pos += ex;
            var id = d.AsSpan(pos, ids).ToArray();
            pos += ids;
            var name = d.AsSpan(pos, ns).ToArray();
            pos += ns;
            entries.Add((head, extra, id, name));
        }
        var (h, e, idb, nm) = entries[index];
        var resized = new byte[extraSize];
        e.AsSpan(0, Math.Min(e.Length, extraSize)).CopyTo(resized);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(36), (uint)extraSize);
        BinaryPrimitives.WriteUInt64BigEndian(h, (ulong)((long)BinaryPrimitives.ReadUInt64BigEndian(h) + l1Delta));
        entries[index] = (h, resized, idb, nm);
        var table = new List<byte>();
        foreach (var (head, extra, id, name) in entries)
        {
            while (table.Count % 8 != 0)
                table.Add(0);
            table.AddRange(head);
            table.AddRange(extra);
            table.AddRange(id);
            table.AddRange(name);
        }
        using var f = File.OpenWrite(_path);
        f.Seek(off, SeekOrigin.Begin);
        f.Write([.. table]);
    }

    private (long Offset, int Bit) RefcountPosition(long cluster)
    {
        long block = (long)(ReadU64(RefTableOffset + cluster / RefsPerBlock * 8) & ~0x1ffUL);
        Assert.NotEqual(0, block);
        long bitPos = cluster % RefsPerBlock << RefcountOrder;
        return (block + (bitPos >> 3), (int)(bitPos & 7));
    }

    private byte[] ReadBytes(long offset, int n)
    {
        var b = new byte[n];
        using var f = File.OpenRead(_path);
        f.Seek(offset, SeekOrigin.Begin);
        _ = f.Read(b, 0, n);
        return b;
    }
}
