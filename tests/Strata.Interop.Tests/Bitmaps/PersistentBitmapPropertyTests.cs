using Strata.Images.Bitmaps;
using Strata.Images.Format;
using Strata.Images.Qcow2;
using Xunit;
using Xunit.Abstractions;

namespace Strata.Interop.Tests.Bitmaps;

/// <summary>
/// Random sequences of guest writes/zeroes/discards and bitmap add/remove/clear/enable/disable/merge on a real
/// qcow2 image through Strata's library, with close/reopen cycles (store and load), against an in-memory model
/// of every bitmap. A subset of the final images is checked with qemu-img check and QEMU's view of the bits.
/// </summary>
public sealed class PersistentBitmapPropertyTests(ITestOutputHelper output)
{
    private sealed class ModelBitmap(string name, int granBits, long size, bool enabled)
    {
        public string Name = name;
        public int GranBits = granBits;
        public bool Enabled = enabled;
        public bool[] Bits = new bool[(size + (1L << granBits) - 1) >> granBits];

        public void Mark(long off, long len)
        {
            for (long i = off >> GranBits; i <= (off + len - 1) >> GranBits; i++)
                Bits[i] = true;
        }
    }

    [Fact]
    public async Task RandomSequences_StoreAndLoadLikeTheModel()
    {
        QemuTools.RequireTools("qemu-img", "qemu-nbd", "nbdinfo");
        using var dir = new TempDir("bm-prop");
        int baseSeed = Environment.TickCount;
        output.WriteLine($"base seed {baseSeed}");
        const int sequences = 200;
        for (int seq = 0; seq < sequences; seq++)
        {
            int seed = baseSeed + seq;
            string path = dir.Combine($"p{seq % 4}.qcow2");
            try
            {
                await RunOneAsync(path, seed, verifyWithQemu: seq % 25 == 0);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                throw new Xunit.Sdk.XunitException($"sequence seed {seed}: {e}");
            }
        }
    }

    private static async Task RunOneAsync(string path, int seed, bool verifyWithQemu)
    {
        var rnd = new Random(seed);
        int cb = rnd.Next(3) switch { 0 => 9, 1 => 12, _ => 16 };
        long size = (long)rnd.Next(1, 64) << 16;
        File.Delete(path);
        await using (await Qcow2Creator.CreateAsync(Strata.Images.Storage.FileStorage.Create(path, Strata.Images.Storage.FileStorageOptions.Default),
            new Qcow2CreateOptions { Size = size, ClusterSize = 1 << cb }))
        {
        }
        var model = new List<ModelBitmap>();
        var data = new byte[256 << 10];
        int names = 0;
        Qcow2Image img = await OpenAsync(path);
        try
        {
            for (int step = rnd.Next(5, 25); step > 0; step--)
            {
                ModelBitmap? Pick() => model.Count == 0 ? null : model[rnd.Next(model.Count)];
                switch (rnd.Next(11))
                {
                    case 0 or 1 or 2:
                    {
                        long off = (long)(rnd.NextDouble() * size);
                        long len = Math.Max(1, Math.Min(size - off, rnd.Next(1, data.Length)));
                        int kind = rnd.Next(3);
                        if (kind == 0)
                            await img.WriteAsync(data.AsMemory(0, (int)len), off);
                        else if (kind == 1)
                            await img.WriteZeroesAsync(off, len);
                        else
                            await img.DiscardAsync(off, len);
                        foreach (var m in model.Where(m => m.Enabled))
                            m.Mark(off, len);
                        break;
                    }
                    case 3 or 4:
                    {
                        int gb = rnd.Next(9, 20);
                        bool disabled = rnd.Next(3) == 0;
                        string name = "bm" + names++;
                        await img.AddDirtyBitmapAsync(name, 1u << gb, persistent: true, disabled: disabled);
                        model.Add(new ModelBitmap(name, gb, size, !disabled));
                        break;
                    }
                    case 5:
                        if (Pick() is { } r)
                        {
                            await img.RemoveDirtyBitmapAsync(r.Name);
                            model.Remove(r);
                        }
                        break;
                    case 6:
                        if (Pick() is { } c)
                        {
                            DirtyBitmapSet.ClearBits(img.DirtyBitmaps.Lookup(c.Name));
                            Array.Clear(c.Bits);
                        }
                        break;
                    case 7:
                        if (Pick() is { } t)
                        {
                            t.Enabled = !t.Enabled;
                            img.DirtyBitmaps.SetEnabled(img.DirtyBitmaps.Lookup(t.Name), t.Enabled);
                        }
                        break;
                    case 8:
                        if (Pick() is { } dst && Pick() is { } src)
                        {
                            DirtyBitmapSet.Merge(img.DirtyBitmaps.Lookup(dst.Name), img.DirtyBitmaps.Lookup(src.Name));
                            for (long i = 0; i < src.Bits.Length; i++)
                                if (src.Bits[i])
                                    dst.Mark(i << src.GranBits, Math.Min(1L << src.GranBits, size - (i << src.GranBits)));
                        }
                        break;
                    default:
                        // Close (store) and open again (load).
                        await img.DisposeAsync();
                        img = await OpenAsync(path);
                        break;
                }
                Verify(img, model);
            }
        }
        finally
        {
            await img.DisposeAsync();
        }
        // What was stored loads back read-only exactly.
        await using (var ro = (Qcow2Image)await ImageOpener.OpenAsync(path, new ImageOpenOptions { Format = "qcow2", ReadOnly = true }))
        {
            Verify(ro, model);
            var dirEntries = await ro.ReadBitmapDirectoryAsync();
            Assert.All(dirEntries, e => Assert.False(e.InUse));
            Assert.Equal(model.Select(m => (m.Name, m.Enabled)).Order(), dirEntries.Select(e => (e.Name, e.Auto)).Order());
        }
        if (verifyWithQemu)
        {
            BitmapOracle.AssertCheckClean(path);
            foreach (var m in model)
                Assert.Equal(Dirty(m, size), BitmapOracle.QemuDirty(path, m.Name));
        }
    }

    private static async Task<Qcow2Image> OpenAsync(string path) =>
        (Qcow2Image)await ImageOpener.OpenAsync(path, new ImageOpenOptions { Format = "qcow2" });

    private static List<(long, long)> Dirty(ModelBitmap m, long size)
    {
        var list = new List<(long, long)>();
        for (long i = 0; i < m.Bits.Length;)
        {
            if (!m.Bits[i])
            {
                i++;
                continue;
            }
            long j = i;
            while (j < m.Bits.Length && m.Bits[j])
                j++;
            list.Add((i << m.GranBits, Math.Min(j << m.GranBits, size) - (i << m.GranBits)));
            i = j;
        }
        return list;
    }

    private static void Verify(Qcow2Image img, List<ModelBitmap> model)
    {
        Assert.Equal(model.Select(m => m.Name).Order(), img.DirtyBitmaps.All.Select(b => b.Name!).Order());
        foreach (var m in model)
        {
            var b = img.DirtyBitmaps.Lookup(m.Name);
            Assert.Equal(m.Enabled, b.Enabled);
            Assert.Equal(1u << m.GranBits, b.Granularity);
            Assert.Equal(Dirty(m, img.Size), b.Extents().Where(e => e.Dirty).Select(e => (e.Offset, e.Length)).ToList());
        }
    }
}
