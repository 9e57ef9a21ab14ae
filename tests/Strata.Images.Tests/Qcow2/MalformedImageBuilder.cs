using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Strata.Images.Qcow2;
using Strata.Images.Storage;

namespace Strata.Images.Tests.Qcow2;

/// <summary>The valid image a malformed case starts from.</summary>
public enum MalformedBase
{
    /// <summary>v3, 64 KiB clusters, 4 MiB, 16-bit refcounts, data in guest clusters 0, 16 and part of 32.</summary>
    Default,
    /// <summary>As <see cref="Default"/> but compat=0.10 (version 2).</summary>
    V2,
    /// <summary>v3 with 4 KiB clusters.</summary>
    Cluster4K,
    /// <summary>v3, 64 KiB clusters, extended L2 entries.</summary>
    ExtendedL2,
    /// <summary>As <see cref="Default"/>, with guest cluster 0 stored as a (valid) zlib-compressed cluster.</summary>
    Compressed,
}

/// <summary>
/// Builds a valid qcow2 image with Strata's creator and patches it byte for byte (all fields big-endian).
/// Works on the file directly so that sparse images with huge tables cost no memory.
/// </summary>
internal sealed class MalformedImageBuilder : IDisposable
{
    // Header field offsets (docs/interop/qcow2.txt).
    public const int OffMagic = 0;
    public const int OffVersion = 4;
    public const int OffBackingOffset = 8;
    public const int OffBackingSize = 16;
    public const int OffClusterBits = 20;
    public const int OffSize = 24;
    public const int OffCryptMethod = 32;
    public const int OffL1Size = 36;
    public const int OffL1Offset = 40;
    public const int OffRefTableOffset = 48;
    public const int OffRefTableClusters = 56;
    public const int OffNbSnapshots = 60;
    public const int OffSnapshotsOffset = 64;
    public const int OffIncompat = 72;
    public const int OffCompat = 80;
    public const int OffAutoclear = 88;
    public const int OffRefcountOrder = 96;
    public const int OffHeaderLength = 100;
    public const int OffCompressionType = 104;

    public const uint ExtBackingFormat = 0xE2792ACA;
    public const uint ExtFeatureTable = 0x6803F857;
    public const uint ExtBitmaps = 0x23852875;
    public const uint ExtCrypto = 0x0537BE77;
    public const uint ExtDataFile = 0x44415441;

    public const ulong L1OffsetMask = 0x00FFFFFFFFFFFE00UL;
    public const ulong L2OffsetMask = 0x00FFFFFFFFFFFE00UL;
    public const ulong Copied = 1UL << 63;
    public const ulong CompressedFlag = 1UL << 62;

    public const long DefaultSize = 4L << 20;

    /// <summary>Guest ranges the base image holds data in (everything else reads as zero).</summary>
    public static readonly (long Offset, int Length)[] BaseData = [(0, 65536), (1L << 20, 65536), ((2L << 20) + 4096, 8192)];

    private static readonly byte[] Text = Encoding.ASCII.GetBytes("Strata malformed-image corpus: every case refused or handled. ");

    /// <summary>The base image's guest byte at <paramref name="offset"/> (compressible, position dependent).</summary>
    public static byte PatternByte(long offset) => (byte)(Text[(int)(offset % Text.Length)] ^ (byte)(offset >> 16));

    public static void FillPattern(Span<byte> dest, long offset)
    {
        for (int i = 0; i < dest.Length; i++)
            dest[i] = PatternByte(offset + i);
    }

    private readonly FileStream _fs;

    private MalformedImageBuilder(string path)
    {
        Path = path;
        _fs = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.None);
    }

    public string Path { get; }

    /// <summary>Creates the base image (through Strata) at <paramref name="path"/> and opens it for patching.</summary>
    public static async Task<MalformedImageBuilder> CreateAsync(string path, MalformedBase kind)
    {
        var o = kind switch
        {
            MalformedBase.V2 => new Qcow2CreateOptions { Size = DefaultSize, Version = 2 },
            MalformedBase.Cluster4K => new Qcow2CreateOptions { Size = DefaultSize, ClusterSize = 4096 },
            MalformedBase.ExtendedL2 => new Qcow2CreateOptions { Size = DefaultSize, ExtendedL2 = true },
            _ => new Qcow2CreateOptions { Size = DefaultSize },
        };
        var img = await Qcow2Creator.CreateAsync(FileStorage.Create(path, FileStorageOptions.Default), o);
        await using (img)
        {
            foreach (var (off, len) in BaseData)
            {
                var buf = new byte[len];
                FillPattern(buf, off);
                await img.WriteAsync(buf, off);
            }
            await img.FlushAsync();
        }
        var b = new MalformedImageBuilder(path);
        if (kind == MalformedBase.Compressed)
            b.CompressCluster(0);
        return b;
    }

    public static MalformedImageBuilder Open(string path) => new(path);

    public void Dispose() => _fs.Dispose();

    // ---- raw access --------------------------------------------------------------------------

    public long Length => _fs.Length;

    public byte[] Read(long offset, int length)
    {
        var b = new byte[length];
        int n = RandomAccess.Read(_fs.SafeFileHandle, b, offset);
        Debug.Assert(n <= length);
        return b;
    }

    public void Write(long offset, ReadOnlySpan<byte> data)
    {
        RandomAccess.Write(_fs.SafeFileHandle, data, offset);
        _fs.Flush();
    }

    public void Fill(long offset, int length, byte value)
    {
        var b = new byte[length];
        Array.Fill(b, value);
        Write(offset, b);
    }

    public void SetLength(long length) => _fs.SetLength(length);

    public ushort U16(long offset) => BinaryPrimitives.ReadUInt16BigEndian(Read(offset, 2));
    public uint U32(long offset) => BinaryPrimitives.ReadUInt32BigEndian(Read(offset, 4));
    public ulong U64(long offset) => BinaryPrimitives.ReadUInt64BigEndian(Read(offset, 8));

    public void SetU8(long offset, byte v) => Write(offset, [v]);

    public void SetU16(long offset, ushort v)
    {
        Span<byte> b = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16BigEndian(b, v);
        Write(offset, b);
    }

    public void SetU32(long offset, uint v)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, v);
        Write(offset, b);
    }

    public void SetU64(long offset, ulong v)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(b, v);
        Write(offset, b);
    }

    // ---- header --------------------------------------------------------------------------------

    public int Version => (int)U32(OffVersion);
    public int ClusterBits => (int)U32(OffClusterBits);
    public int ClusterSize => 1 << ClusterBits;
    public long VirtualSize => (long)U64(OffSize);
    public long L1Offset => (long)U64(OffL1Offset);
    public long L1Size => U32(OffL1Size);
    public long RefTableOffset => (long)U64(OffRefTableOffset);
    public long RefTableClusters => U32(OffRefTableClusters);
    public int HeaderLength => Version >= 3 ? (int)U32(OffHeaderLength) : 72;
    public bool ExtendedL2 => Version >= 3 && (U64(OffIncompat) & (1UL << 4)) != 0;
    private int L2EntrySize => ExtendedL2 ? 16 : 8;
    private int L2Bits => ClusterBits - (ExtendedL2 ? 4 : 3);

    // ---- L1 / L2 -------------------------------------------------------------------------------

    public int L1Index(long guest) => (int)(guest >> (ClusterBits + L2Bits));
    public int L2Index(long guest) => (int)((guest >> ClusterBits) & ((1L << L2Bits) - 1));

    public ulong L1Entry(int i) => U64(L1Offset + 8L * i);
    public void SetL1Entry(int i, ulong v) => SetU64(L1Offset + 8L * i, v);

    /// <summary>Host offset of the L2 table that maps <paramref name="guest"/> (0 when none).</summary>
    public long L2Table(long guest) => (long)(L1Entry(L1Index(guest)) & L1OffsetMask);

    public long L2EntryOffset(long guest)
    {
        long t = L2Table(guest);
        if (t == 0)
            throw new InvalidOperationException($"guest offset 0x{guest:x} has no L2 table");
        return t + (long)L2Index(guest) * L2EntrySize;
    }

    public ulong L2Entry(long guest) => U64(L2EntryOffset(guest));
    public void SetL2Entry(long guest, ulong v) => SetU64(L2EntryOffset(guest), v);
    public ulong L2Bitmap(long guest) => U64(L2EntryOffset(guest) + 8);
    public void SetL2Bitmap(long guest, ulong v) => SetU64(L2EntryOffset(guest) + 8, v);

    /// <summary>Host offset of the (standard) data cluster mapping <paramref name="guest"/>.</summary>
    public long DataCluster(long guest) => (long)(L2Entry(guest) & L2OffsetMask);

    // ---- refcounts -----------------------------------------------------------------------------

    public ulong RefTableEntry(int i) => U64(RefTableOffset + 8L * i);
    public void SetRefTableEntry(int i, ulong v) => SetU64(RefTableOffset + 8L * i, v);

    /// <summary>Sets a 16-bit refcount (the base images use refcount_order 4).</summary>
    public void SetRefcount(long cluster, ushort value)
    {
        if (U32(OffRefcountOrder) != 4 && Version >= 3)
            throw new InvalidOperationException("only 16-bit refcounts are supported by the builder");
        long perBlock = ClusterSize / 2;
        long block = (long)(RefTableEntry((int)(cluster / perBlock)) & ~0x1FFUL);
        if (block == 0)
            throw new InvalidOperationException($"cluster {cluster} has no refcount block");
        SetU16(block + (cluster % perBlock) * 2, value);
    }

    /// <summary>Appends <paramref name="count"/> zeroed clusters at the cluster-aligned end of the file, counted with refcount 1.</summary>
    public long AppendClusters(int count)
    {
        long cs = ClusterSize;
        long at = (Length + cs - 1) / cs * cs;
        SetLength(at + count * cs);
        for (int i = 0; i < count; i++)
            SetRefcount(at / cs + i, 1);
        return at;
    }

    // ---- header extensions and backing name ------------------------------------------------------

    public List<(uint Type, byte[] Data)> ReadExtensions()
    {
        var list = new List<(uint, byte[])>();
        long pos = HeaderLength;
        while (pos + 8 <= ClusterSize)
        {
            uint type = U32(pos);
            uint len = U32(pos + 4);
            if (type == 0)
                break;
            list.Add((type, Read(pos + 8, (int)len)));
            pos += 8 + ((len + 7) & ~7u);
        }
        return list;
    }

    /// <summary>
    /// Rewrites the extension area of cluster 0 (from header_length) with <paramref name="extensions"/> and an
    /// end marker; the rest of cluster 0 is zeroed. Returns the offset just past the end marker.
    /// </summary>
    public long WriteExtensions(IEnumerable<(uint Type, byte[] Data)> extensions)
    {
        int start = HeaderLength;
        var area = new byte[ClusterSize - start];
        int p = 0;
        foreach (var (type, data) in extensions)
        {
            BinaryPrimitives.WriteUInt32BigEndian(area.AsSpan(p), type);
            BinaryPrimitives.WriteUInt32BigEndian(area.AsSpan(p + 4), (uint)data.Length);
            data.CopyTo(area, p + 8);
            p += 8 + ((data.Length + 7) & ~7);
        }
        p += 8; // end marker (zeroes)
        Write(start, area);
        return start + p;
    }

    /// <summary>Writes a raw extension header (type, length) at <paramref name="position"/> with no data check.</summary>
    public void WriteRawExtensionHeader(long position, uint type, uint length)
    {
        SetU32(position, type);
        SetU32(position + 4, length);
    }

    public void SetBackingName(long offset, uint size, ReadOnlySpan<byte> name)
    {
        SetU64(OffBackingOffset, (ulong)offset);
        SetU32(OffBackingSize, size);
        if (!name.IsEmpty)
            Write(offset, name);
    }

    public static byte[] FeatureTableEntry(byte type, byte bit, string name)
    {
        var e = new byte[48];
        e[0] = type;
        e[1] = bit;
        Encoding.ASCII.GetBytes(name).CopyTo(e, 2);
        return e;
    }

    public static byte[] BitmapsExtension(uint count, ulong dirSize, ulong dirOffset)
    {
        var e = new byte[24];
        BinaryPrimitives.WriteUInt32BigEndian(e, count);
        BinaryPrimitives.WriteUInt64BigEndian(e.AsSpan(8), dirSize);
        BinaryPrimitives.WriteUInt64BigEndian(e.AsSpan(16), dirOffset);
        return e;
    }

    // ---- compressed clusters ---------------------------------------------------------------------

    public int CompressedShift => 62 - (ClusterBits - 8);

    public static ulong CompressedDescriptor(int clusterBits, long hostOffset, long sectors)
    {
        int x = 62 - (clusterBits - 8);
        return CompressedFlag | ((ulong)(sectors - 1) << x) | (ulong)hostOffset;
    }

    /// <summary>
    /// Replaces the data cluster of <paramref name="guest"/> by its zlib-compressed form in place (same host
    /// cluster, rest zeroed) and points the L2 entry at it. Returns the host offset and compressed length.
    /// </summary>
    public (long Host, int Bytes) CompressCluster(long guest)
    {
        int cs = ClusterSize;
        long host = DataCluster(guest);
        var data = Read(host, cs);
        var dest = new byte[cs - 1];
        int n = Qcow2Compression.Compress(CompressionType.Zlib, data, dest);
        if (n <= 0)
            throw new InvalidOperationException("base pattern did not compress");
        var cluster = new byte[cs];
        dest.AsSpan(0, n).CopyTo(cluster);
        Write(host, cluster);
        SetL2Entry(guest, CompressedDescriptor(ClusterBits, host, (n + 511) / 512));
        return (host, n);
    }

    // ---- snapshots -------------------------------------------------------------------------------

    public static byte[] SnapshotEntry(ulong l1Offset, uint l1Size, string id, string name, uint extraDataSize, byte[] extra)
    {
        var idb = Encoding.ASCII.GetBytes(id);
        var nb = Encoding.ASCII.GetBytes(name);
        int len = 40 + extra.Length + idb.Length + nb.Length;
        var e = new byte[(len + 7) & ~7];
        BinaryPrimitives.WriteUInt64BigEndian(e, l1Offset);
        BinaryPrimitives.WriteUInt32BigEndian(e.AsSpan(8), l1Size);
        BinaryPrimitives.WriteUInt16BigEndian(e.AsSpan(12), (ushort)idb.Length);
        BinaryPrimitives.WriteUInt16BigEndian(e.AsSpan(14), (ushort)nb.Length);
        BinaryPrimitives.WriteUInt32BigEndian(e.AsSpan(36), extraDataSize);
        extra.CopyTo(e, 40);
        idb.CopyTo(e, 40 + extra.Length);
        nb.CopyTo(e, 40 + extra.Length + idb.Length);
        return e;
    }

    // ---- metadata map (for overlap checks after writes) ------------------------------------------

    /// <summary>
    /// Which roles each host cluster plays according to the image's own metadata (header, reftable, refblock,
    /// L1, L2, data). Entries that are misaligned or lie outside the file are ignored; everything is bounded.
    /// </summary>
    public static Dictionary<long, SortedSet<string>> MapClusters(string path)
    {
        var map = new Dictionary<long, SortedSet<string>>();
        using var b = Open(path);
        long len = b.Length;
        if (len < 112)
            return map;
        int cb = b.ClusterBits;
        if (cb is < 9 or > 21)
            return map;
        long cs = 1L << cb;
        void Add(long off, string role)
        {
            long c = off / cs;
            if (!map.TryGetValue(c, out var s))
                map[c] = s = [];
            s.Add(role);
        }
        bool Ok(long off) => off > 0 && off % cs == 0 && off < len;

        Add(0, "header");
        long rt = b.RefTableOffset;
        long rtc = Math.Min(b.RefTableClusters, 256);
        if (Ok(rt))
        {
            for (long i = 0; i < rtc && rt + i * cs < len; i++)
                Add(rt + i * cs, "reftable");
            long entries = Math.Min(rtc * cs / 8, (len - rt) / 8);
            var raw = b.Read(rt, (int)(entries * 8));
            for (long i = 0; i < entries; i++)
            {
                long off = (long)(BinaryPrimitives.ReadUInt64BigEndian(raw.AsSpan((int)(i * 8))) & ~0x1FFUL);
                if (Ok(off))
                    Add(off, "refblock");
            }
        }

        long l1 = b.L1Offset; // may be negative when bit 63 is set: Ok() rejects it
        long l1n = Math.Min(b.L1Size, 4L << 20);
        if (!Ok(l1))
            return map;
        for (long off = l1; off < l1 + l1n * 8 && off < len; off += cs)
            Add(off, "L1");
        long l1Entries = Math.Min(l1n, (len - l1) / 8);
        var l1raw = b.Read(l1, (int)(l1Entries * 8));
        bool ext = b.ExtendedL2;
        int esz = ext ? 16 : 8;
        int l2Tables = 0;
        for (long i = 0; i < l1Entries && l2Tables < 4096; i++)
        {
            long l2 = (long)(BinaryPrimitives.ReadUInt64BigEndian(l1raw.AsSpan((int)(i * 8))) & L1OffsetMask);
            if (!Ok(l2))
                continue;
            l2Tables++;
            Add(l2, "L2");
            var t = b.Read(l2, (int)cs);
            for (int k = 0; k + esz <= t.Length; k += esz)
            {
                ulong e = BinaryPrimitives.ReadUInt64BigEndian(t.AsSpan(k));
                if ((e & CompressedFlag) != 0)
                    continue;
                long d = (long)(e & L2OffsetMask);
                if (Ok(d))
                    Add(d, "data");
            }
        }
        return map;
    }
}

/// <summary>Runs qemu-img (7.2) for comparison.</summary>
internal static class QemuImg
{
    public sealed record Result(int ExitCode, string Stdout, string Stderr, bool TimedOut)
    {
        public bool Ok => ExitCode == 0 && !TimedOut;
        public string Summary => TimedOut ? "timed out" : ExitCode == 0 ? "ok" : $"exit {ExitCode}: {Stderr.Trim()}";
    }

    private static readonly Lazy<string?> s_path = new(() =>
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin").Split(':'))
        {
            var p = System.IO.Path.Combine(dir, "qemu-img");
            if (File.Exists(p))
                return p;
        }
        return null;
    });

    public static bool Available => s_path.Value != null;

    public static async Task<Result> RunAsync(params string[] args)
    {
        var psi = new ProcessStartInfo(s_path.Value ?? "qemu-img")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var so = p.StandardOutput.ReadToEndAsync();
        var se = p.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        try
        {
            await p.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            p.Kill(entireProcessTree: true);
            return new Result(-1, "", "", TimedOut: true);
        }
        return new Result(p.ExitCode, await so, await se, false);
    }

    /// <summary><c>qemu-img check -f qcow2 --output=json</c>: corruptions plus check errors, or null when the check itself failed.</summary>
    public static async Task<(Result Result, long? Errors)> CheckAsync(string path)
    {
        var r = await RunAsync("check", "-f", "qcow2", "--output=json", path);
        if (r.TimedOut || r.Stdout.Length == 0)
            return (r, null);
        try
        {
            using var doc = JsonDocument.Parse(r.Stdout);
            long n = 0;
            foreach (var key in new[] { "corruptions", "check-errors" })
                if (doc.RootElement.TryGetProperty(key, out var v))
                    n += v.GetInt64();
            return (r, n);
        }
        catch (JsonException)
        {
            return (r, null);
        }
    }

    /// <summary><c>qemu-img info -f qcow2 --output=json</c>; the virtual size when it opened the image.</summary>
    public static async Task<(Result Result, long? VirtualSize)> InfoAsync(string path)
    {
        var r = await RunAsync("info", "-f", "qcow2", "--output=json", path);
        if (!r.Ok)
            return (r, null);
        using var doc = JsonDocument.Parse(r.Stdout);
        return (r, doc.RootElement.GetProperty("virtual-size").GetInt64());
    }

    /// <summary>Reads guest bytes [offset, offset+length) through QEMU's qcow2 driver (a raw slice over it).</summary>
    public static async Task<(Result Result, byte[]? Data)> ReadAsync(string path, long offset, long length, string scratch)
    {
        var spec = new Dictionary<string, object>
        {
            ["driver"] = "raw",
            ["offset"] = offset,
            ["size"] = length,
            ["file"] = new Dictionary<string, object>
            {
                ["driver"] = "qcow2",
                ["file"] = new Dictionary<string, object> { ["driver"] = "file", ["filename"] = path },
            },
        };
        string json = "json:" + JsonSerializer.Serialize(spec);
        File.Delete(scratch);
        var r = await RunAsync("convert", "-O", "raw", json, scratch);
        if (!r.Ok)
            return (r, null);
        var data = await File.ReadAllBytesAsync(scratch);
        File.Delete(scratch);
        if (data.Length != length)
            return (r with { ExitCode = 99, Stderr = $"qemu-img produced {data.Length} bytes instead of {length}" }, null);
        return (r, data);
    }
}
