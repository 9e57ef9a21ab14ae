using Strata.Images.Bitmaps;
using Xunit;

namespace Strata.Images.Tests.Bitmaps;

/// <summary>
/// DirtyBitmap against a plain bool-per-granule model: random sequences of set, reset, clear, merge (same and
/// other granularity), resize and serialisation round trips; every query (get, count, next dirty/clean, extents,
/// dirty areas) is compared after each step.
/// </summary>
public sealed class DirtyBitmapPropertyTests
{
    private sealed class Model(long size, int granBits)
    {
        public long Size = size;
        public readonly int GranBits = granBits;
        public bool[] Bits = new bool[(size + (1L << granBits) - 1) >> granBits];

        public void Set(long off, long len, bool v)
        {
            if (len <= 0)
                return;
            long first = off >> GranBits, last = Math.Min((off + len - 1) >> GranBits, Bits.Length - 1);
            for (long i = first; i <= last; i++)
                Bits[i] = v;
        }

        public bool Get(long off) => Bits[off >> GranBits];
    }

    [Fact]
    public void RandomSequences_MatchModel()
    {
        int baseSeed = Environment.TickCount;
        for (int seq = 0; seq < 300; seq++)
        {
            int seed = baseSeed + seq;
            try
            {
                RunOne(seed);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                throw new Xunit.Sdk.XunitException($"sequence seed {seed}: {e}");
            }
        }
    }

    private static void RunOne(int seed)
    {
        var rnd = new Random(seed);
        int granBits = rnd.Next(9, 18);
        long g = 1L << granBits;
        // Sizes around word and summary boundaries (64 and 4096 granules) and unaligned ends.
        long granules = rnd.Next(4) switch { 0 => rnd.Next(1, 70), 1 => rnd.Next(4000, 4200), 2 => 64 * rnd.Next(1, 80), _ => rnd.Next(1, 9000) };
        long size = granules * g - (rnd.Next(3) == 0 ? rnd.Next(1, (int)Math.Min(g, 1 << 16)) : 0);
        size = Math.Max(size, 1);
        var bm = new DirtyBitmap(size, (uint)g, "b");
        var model = new Model(size, granBits);
        int steps = rnd.Next(10, 40);
        for (int s = 0; s < steps; s++)
        {
            long off = (long)(rnd.NextDouble() * size);
            long len = rnd.Next(3) == 0 ? rnd.Next(1, 1000) : (long)(rnd.NextDouble() * (size - off)) + 1;
            len = Math.Min(len, size - off);
            switch (rnd.Next(9))
            {
                case 0 or 1 or 2:
                    bm.SetRange(off, len);
                    model.Set(off, len, true);
                    break;
                case 3:
                {
                    long a = off & ~(g - 1);
                    long end = rnd.Next(2) == 0 ? size : Math.Min(size, (off + len + g - 1) & ~(g - 1));
                    if (end > a)
                    {
                        bm.ResetRange(a, end - a);
                        model.Set(a, end - a, false);
                    }
                    break;
                }
                case 4:
                    if (rnd.Next(4) == 0)
                    {
                        bm.Clear();
                        Array.Clear(model.Bits);
                    }
                    break;
                case 5:
                {
                    // Merge a random source of the same size, maybe another granularity.
                    int sg = rnd.Next(2) == 0 ? granBits : rnd.Next(9, 18);
                    var src = new DirtyBitmap(size, 1u << sg);
                    var sm = new Model(size, sg);
                    for (int k = rnd.Next(1, 5); k > 0; k--)
                    {
                        long o2 = (long)(rnd.NextDouble() * size);
                        long l2 = Math.Min(size - o2, rnd.Next(1, 200000));
                        src.SetRange(o2, l2);
                        sm.Set(o2, l2, true);
                    }
                    bm.Merge(src);
                    for (long i = 0; i < sm.Bits.Length; i++)
                        if (sm.Bits[i])
                            model.Set(i << sg, Math.Min(1L << sg, size - (i << sg)), true);
                    break;
                }
                case 6:
                {
                    // QEMU's serialisation: whole 64-granule words; a round trip through a fresh bitmap is exact.
                    long bytes = bm.SerializationSize(0, size);
                    var buf = new byte[bytes];
                    bm.SerializePart(buf, 0, size);
                    for (long i = 0; i < model.Bits.Length; i++)
                        Assert.Equal(model.Bits[i], (buf[i >> 3] & (1 << (int)(i & 7))) != 0);
                    var copy = new DirtyBitmap(size, (uint)g);
                    long chunk = copy.SerializationCoverage(512);
                    for (long o = 0; o < size; o += chunk)
                    {
                        long n = Math.Min(chunk, size - o);
                        var part = new byte[512];
                        bm.SerializePart(part, o, n);
                        copy.DeserializePart(part, o, n);
                    }
                    Assert.Equal(bm.DirtyGranules, copy.DirtyGranules);
                    Assert.Equal(bm.Extents().ToList(), copy.Extents().ToList());
                    break;
                }
                case 7:
                    if (rnd.Next(3) == 0)
                    {
                        long ns = Math.Max(1, size + rnd.Next(-(int)Math.Min(size - 1, 300000), 300000));
                        bm.Resize(ns);
                        var nb = new bool[(ns + g - 1) >> granBits];
                        Array.Copy(model.Bits, nb, Math.Min(nb.Length, model.Bits.Length));
                        model.Bits = nb;
                        model.Size = size = ns;
                    }
                    break;
                default:
                    bm.SetAll();
                    model.Set(0, size, true);
                    if (rnd.Next(2) == 0)
                    {
                        bm.ResetRange(0, size);
                        model.Set(0, size, false);
                    }
                    break;
            }
            Verify(bm, model, rnd);
        }
    }

    private static void Verify(DirtyBitmap bm, Model m, Random rnd)
    {
        long size = m.Size, g = 1L << m.GranBits;
        Assert.Equal(m.Bits.LongLength, bm.BitCount);
        long count = m.Bits.LongCount(b => b);
        Assert.Equal(count, bm.DirtyGranules);
        Assert.Equal(count << m.GranBits, bm.DirtyBytes);
        // Extents from the model.
        var expect = new List<(long, long, bool)>();
        for (long i = 0; i < m.Bits.Length;)
        {
            long j = i;
            while (j < m.Bits.Length && m.Bits[j] == m.Bits[i])
                j++;
            expect.Add((i << m.GranBits, Math.Min(j << m.GranBits, size) - (i << m.GranBits), m.Bits[i]));
            i = j;
        }
        Assert.Equal(expect, bm.Extents().ToList());
        for (int k = 0; k < 8; k++)
        {
            long off = (long)(rnd.NextDouble() * size);
            long max = rnd.Next(2) == 0 ? -1 : rnd.Next(1, 1 << 22);
            long end = max < 0 ? size : Math.Min(size, off + max);
            Assert.Equal(m.Get(off), bm.Get(off));
            Assert.Equal(Scan(m, off, end, true), bm.NextDirty(off, max));
            Assert.Equal(Scan(m, off, end, false), bm.NextClean(off, max));
            var area = bm.NextDirtyArea(off, end);
            long d = Scan(m, off, end, true);
            if (d < 0)
                Assert.Null(area);
            else
            {
                long c = Scan(m, d, end, false);
                Assert.Equal((d, (c < 0 ? end : c) - d), area);
            }
        }
    }

    private static long Scan(Model m, long off, long end, bool dirty)
    {
        for (long i = off >> m.GranBits; i < m.Bits.Length && (i << m.GranBits) < end; i++)
            if (m.Bits[i] == dirty)
                return Math.Max(off, i << m.GranBits);
        return -1;
    }

    [Fact]
    public void Limits_AndSetOperations_UseQemuMessages()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new DirtyBitmap(1 << 20, 256));
        Assert.Throws<ArgumentOutOfRangeException>(() => new DirtyBitmap(1 << 20, 1000));
        _ = new DirtyBitmap(1L << 40, 1u << 31);
        var set = new DirtyBitmapSet();
        var a = new DirtyBitmap(1 << 20, 4096, "a");
        set.Add(a);
        Assert.Equal("Bitmap already exists: a", Assert.Throws<BitmapException>(() => set.Add(new DirtyBitmap(1 << 20, 4096, "a"))).Message);
        Assert.Equal("Dirty bitmap 'x' not found", Assert.Throws<BitmapException>(() => set.Lookup("x")).Message);
        // Recording reaches enabled bitmaps only.
        var b = new DirtyBitmap(1 << 20, 512, "b") { Enabled = false };
        set.Add(b);
        Assert.Equal(["b", "a"], set.All.Select(x => x.Name));
        set.RecordWrite(5000, 10);
        Assert.Equal(1, a.DirtyGranules);
        Assert.Equal(0, b.DirtyGranules);
        set.SetEnabled(b, true);
        set.RecordWrite(5000, 10);
        Assert.Equal(1, b.DirtyGranules);
        a.Inconsistent = true;
        var e = Assert.Throws<BitmapException>(() => DirtyBitmapSet.ClearBits(a));
        Assert.Equal("Bitmap 'a' is inconsistent and cannot be used", e.Message);
        Assert.Equal("Try block-dirty-bitmap-remove to delete this bitmap from disk\n", e.Hint);
        b.ReadOnly = true;
        Assert.Equal("Bitmap 'b' is readonly and cannot be modified", Assert.Throws<BitmapException>(() => DirtyBitmapSet.ClearBits(b)).Message);
        var c = new DirtyBitmap(2 << 20, 4096, "c");
        Assert.Equal("Bitmaps are of different sizes (destination size is 2097152, source size is 1048576) and can't be merged",
            Assert.Throws<BitmapException>(() => DirtyBitmapSet.Merge(c, new DirtyBitmap(1 << 20, 4096, "d"))).Message);
        Assert.Throws<ArgumentException>(() => c.ResetRange(100, 4096));
        Assert.Equal(65536u, DirtyBitmapSet.DefaultGranularity(2 << 20));
        Assert.Equal(4096u, DirtyBitmapSet.DefaultGranularity(512));
    }
}
