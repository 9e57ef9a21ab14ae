using Strata.Images.Chain;
using Strata.Images.Format;
using Strata.Images.Qcow2;
using Strata.Images.Storage;
using Xunit;

namespace Strata.Images.Tests.Chain;

/// <summary>
/// Model-based property test of rebase, commit and amend through the library API: random writes and chain operations
/// on small chains (base ← mid ← top, plus a standalone image to rebase onto), each step checked against an in-memory
/// model of every layer (which 512-byte sectors it holds, and their bytes); every image is checked for consistency at
/// the end of each sequence.
/// </summary>
public sealed class ChainModelTests
{
    private const int Sector = 512;
    /// <summary>cache=unsafe: durability is not what this test is about, and fsyncs would dominate its time.</summary>
    private static readonly FileStorageOptions Unsafe = new(ReadOnly: false, Direct: false, NoFlush: true);
    private const long DiskSize = 512 * 1024;

    /// <summary>One layer as the model sees it: its own sectors, and what it reads through.</summary>
    private sealed class Layer(string name, int granule)
    {
        public string Name { get; } = name;
        /// <summary>Allocation granularity of a write (cluster, or subcluster with extended L2).</summary>
        public int Granule { get; } = granule;
        public int ClusterSize { get; init; }
        public byte[] Data { get; } = new byte[DiskSize];
        public bool[] Held { get; } = new bool[DiskSize / Sector];
        public Layer? Backing { get; set; }

        public byte[] View()
        {
            var v = new byte[DiskSize];
            for (long s = 0; s < Held.Length; s++)
                for (var l = this; l != null; l = l.Backing)
                    if (l.Held[s])
                    {
                        Array.Copy(l.Data, s * Sector, v, s * Sector, Sector);
                        break;
                    }
            return v;
        }

        /// <summary>A write allocates every granule it touches; the rest of a granule keeps what the layer read before (copy-on-write).</summary>
        public void Write(long offset, byte[] data)
        {
            var before = View();
            long g0 = offset / Granule * Granule, g1 = (offset + data.Length + Granule - 1) / Granule * Granule;
            for (long p = g0; p < g1; p += Sector)
            {
                if (!Held[p / Sector])
                    Array.Copy(before, p, Data, p, Sector);
                Held[p / Sector] = true;
            }
            Array.Copy(data, 0, Data, offset, data.Length);
        }
    }

    private sealed record Config(int Version, int ClusterSize, bool ExtendedL2);

    private static readonly Config[] Configs =
    [
        new(3, 65536, false), new(2, 65536, false), new(3, 4096, false), new(2, 4096, false), new(3, 65536, true),
    ];

    [Fact]
    public async Task RandomChainOperations_MatchTheModel()
    {
        const int sequences = 220;
        var rng = new Random(20261125);
        using var dir = new TempDir("chainmodel");
        for (int seq = 0; seq < sequences; seq++)
        {
            int seed = rng.Next();
            string sub = Path.Combine(dir.Path, $"s{seq}");
            Directory.CreateDirectory(sub);
            try
            {
                await RunSequenceAsync(sub, new Random(seed), Configs[seq % Configs.Length]);
            }
            catch (Exception e) when (e is not Xunit.Sdk.XunitException)
            {
                throw new InvalidOperationException($"sequence {seq} (seed {seed}) failed: {e.Message}", e);
            }
            Directory.Delete(sub, recursive: true);
        }
    }

    private static async Task RunSequenceAsync(string dir, Random rng, Config cfg)
    {
        int granule = cfg.ExtendedL2 ? cfg.ClusterSize / 32 : cfg.ClusterSize;
        var layers = new Dictionary<string, Layer>();
        async Task<Layer> CreateAsync(string name, Layer? backing)
        {
            var o = new Qcow2CreateOptions
            {
                Size = DiskSize, Version = cfg.Version, ClusterSize = cfg.ClusterSize, ExtendedL2 = cfg.ExtendedL2,
                BackingFile = backing?.Name, BackingFormat = backing != null ? "qcow2" : null,
            };
            await using (await Qcow2Creator.CreateAsync(FileStorage.Create(Path.Combine(dir, name), Unsafe), o)) { }
            var l = new Layer(name, granule) { ClusterSize = cfg.ClusterSize, Backing = backing };
            layers[name] = l;
            return l;
        }
        var baseL = await CreateAsync("base.qcow2", null);
        var mid = await CreateAsync("mid.qcow2", baseL);
        var top = await CreateAsync("top.qcow2", mid);
        var other = await CreateAsync("other.qcow2", null);

        // Some content in every layer first.
        foreach (var l in new[] { baseL, mid, top, other })
            for (int i = rng.Next(1, 4); i > 0; i--)
                await RandomWriteAsync(dir, l, rng);
        await VerifyAsync(dir, layers.Values);

        for (int step = rng.Next(3, 7); step > 0; step--)
        {
            // Only the images an operation can change are read back after it; all of them at the end.
            var changed = new List<Layer> { top };
            switch (rng.Next(6))
            {
                case 0:
                case 1:
                    await RandomWriteAsync(dir, top, rng);
                    break;
                case 2:
                {
                    // Safe rebase of the top onto the image below its backing file, the standalone one, or nothing.
                    Layer? target = rng.Next(3) switch { 0 => top.Backing?.Backing, 1 => other, _ => null };
                    if (ReferenceEquals(target, top.Backing) || ReferenceEquals(target, top))
                        break;
                    await RebaseAsync(dir, top, target);
                    break;
                }
                case 3:
                    if (top.Backing != null)
                    {
                        changed.Add(top.Backing);
                        await CommitAsync(dir, top, top.Backing, empty: rng.Next(2) == 0);
                    }
                    break;
                case 4:
                    if (top.Backing?.Backing is { } deeper)
                    {
                        changed.AddRange(layers.Values.Where(l => l != top));
                        await CommitAsync(dir, top, deeper, empty: false);
                    }
                    break;
                case 5:
                    await AmendAsync(dir, top, rng, cfg);
                    break;
            }
            await VerifyAsync(dir, changed);
        }
        await VerifyAsync(dir, layers.Values);
        foreach (var name in layers.Keys)
            await CheckCleanAsync(Path.Combine(dir, name));
    }

    private static async Task RandomWriteAsync(string dir, Layer l, Random rng)
    {
        long offset = rng.NextInt64(0, DiskSize / Sector) * Sector;
        int len = (int)Math.Min(DiskSize - offset, rng.Next(1, 40) * (long)Sector);
        bool zeroes = rng.Next(4) == 0;
        var data = new byte[len];
        if (!zeroes)
            rng.NextBytes(data);
        await using var img = await ImageOpener.OpenAsync(Path.Combine(dir, l.Name), new ImageOpenOptions { Format = "qcow2", NoFlush = true });
        if (zeroes)
            await img.WriteZeroesAsync(offset, len, rng.Next(2) == 0 ? ZeroFlags.MayUnmap : ZeroFlags.None);
        else
            await img.WriteAsync(data, offset);
        l.Write(offset, data);
    }

    private static async Task RebaseAsync(string dir, Layer top, Layer? target)
    {
        var img = (Qcow2Image)await ImageOpener.OpenAsync(Path.Combine(dir, top.Name), new ImageOpenOptions { Format = "qcow2", NoFlush = true });
        var oldBacking = img.Backing;
        // Rebasing onto a layer of the current chain reuses the opened layer, as qemu-img does.
        IImage? newBacking = null;
        for (var l = oldBacking; l != null && target != null; l = l.Backing)
            if (Path.GetFileName(l.FileName) == target.Name)
                newBacking = l;
        bool inChain = newBacking != null;
        if (target != null && newBacking == null)
            newBacking = await ImageOpener.OpenAsync(Path.Combine(dir, target.Name), new ImageOpenOptions { Format = "qcow2", ReadOnly = true, NoFlush = true });
        await Rebase.RebaseAsync(img, newBacking, target?.Name, target != null ? "qcow2" : null, safe: true);
        if (inChain)
            img.SetBacking(null); // the old chain (which holds the new backing image) is disposed below
        await img.DisposeAsync();
        if (oldBacking != null)
            await oldBacking.DisposeAsync();

        // Model: wherever the top holds nothing and the new chain would read differently, it now holds the old view.
        var before = top.View();
        var newView = target?.View() ?? new byte[DiskSize];
        for (long p = 0; p < DiskSize; p += top.Granule)
        {
            bool differs = false;
            for (long s = p; s < p + top.Granule; s += Sector)
                if (!top.Held[s / Sector] && !before.AsSpan((int)s, Sector).SequenceEqual(newView.AsSpan((int)s, Sector)))
                    differs = true;
            if (!differs)
                continue;
            for (long s = p; s < p + top.Granule; s += Sector)
                if (!top.Held[s / Sector])
                {
                    Array.Copy(before, s, top.Data, s, Sector);
                    top.Held[s / Sector] = true;
                }
        }
        top.Backing = target;
    }

    private static async Task CommitAsync(string dir, Layer top, Layer baseL, bool empty)
    {
        var img = await ImageOpener.OpenAsync(Path.Combine(dir, top.Name), new ImageOpenOptions { Format = "qcow2", NoFlush = true });
        var writableBase = await ImageOpener.OpenAsync(Path.Combine(dir, baseL.Name), new ImageOpenOptions { Format = "qcow2", NoFlush = true });
        Qcow2Image? above = null;
        IImage? readOnlyBase = null;
        for (IImage? l = img; l != null; l = l.Backing)
            if (l.Backing != null && Path.GetFileName(l.Backing.FileName) == baseL.Name)
            {
                above = (Qcow2Image)l;
                readOnlyBase = l.Backing;
                break;
            }
        Assert.NotNull(above);
        above!.SetBacking(writableBase);
        long lastDone = -1, lastTotal = -1;
        await Commit.CommitAsync(img, writableBase, (d, t) => { lastDone = d; lastTotal = t; });
        Assert.Equal(lastTotal, lastDone);
        above.SetBacking(readOnlyBase);
        await writableBase.DisposeAsync();
        if (empty)
            Assert.True(await Commit.MakeEmptyAsync(img));
        await img.DisposeAsync();

        // Model: every granule of the base's commit granularity touched by a layer above the base gets the top's view.
        var view = top.View();
        int g = Math.Clamp(baseL.ClusterSize, 4096, 65536);
        for (long p = 0; p < DiskSize; p += g)
        {
            bool touched = false;
            for (var l = top; l != baseL && l != null; l = l.Backing)
                for (long s = p; s < p + g; s += Sector)
                    touched |= l.Held[s / Sector];
            if (touched)
                baseL.Write(p, view.AsSpan((int)p, g).ToArray());
        }
        if (empty)
            Array.Clear(top.Held);
    }

    private static async Task AmendAsync(string dir, Layer top, Random rng, Config cfg)
    {
        await using var img = (Qcow2Image)await ImageOpener.OpenAsync(Path.Combine(dir, top.Name), new ImageOpenOptions { Format = "qcow2", NoFlush = true });
        var h = img.Header;
        Qcow2AmendOptions o = rng.Next(4) switch
        {
            0 when !cfg.ExtendedL2 && h.RefcountBits == 16 => new() { Version = h.Version == 3 ? 2 : 3 },
            1 when h.Version == 3 => new() { RefcountBits = 1 << rng.Next(0, 7) },
            2 when h.Version == 3 => new() { LazyRefcounts = !h.LazyRefcounts },
            _ => new() { Size = DiskSize },
        };
        await img.AmendAsync(o);
        if (o.Version == 2 && top.Backing == null)
        {
            // A plain zero cluster of an image without backing file becomes unallocated (it reads as zeroes either way).
            // The model cannot tell zero clusters from zero data, so it forgets clusters the image no longer holds.
            for (long s = 0; s < top.Held.Length; s++)
                if (top.Held[s])
                {
                    var st = await img.GetBlockStatusAsync(s * Sector, Sector);
                    if (st.State == BlockState.Unallocated)
                    {
                        Assert.True(top.Data.AsSpan((int)(s * Sector), Sector).IndexOfAnyExcept((byte)0) < 0, "an unallocated sector held data");
                        top.Held[s] = false;
                    }
                }
        }
        if (o.RefcountBits is { } bits)
            Assert.Equal(bits, img.Header.RefcountBits);
        if (o.Version is { } v)
            Assert.Equal(v, img.Header.Version);
    }

    private static async Task VerifyAsync(string dir, IEnumerable<Layer> layers)
    {
        foreach (var l in layers)
        {
            string name = l.Name;
            await using var img = await ImageOpener.OpenAsync(Path.Combine(dir, name), new ImageOpenOptions { Format = "qcow2", ReadOnly = true, NoFlush = true });
            Assert.Equal(l.Backing?.Name, img.BackingFileName);
            var actual = new byte[DiskSize];
            await img.ReadAsync(actual, 0);
            var expected = l.View();
            if (!actual.AsSpan().SequenceEqual(expected))
            {
                int i = actual.AsSpan().CommonPrefixLength(expected);
                Assert.Fail($"{name}: content differs from the model at offset {i} (0x{i:x})");
            }
        }
    }

    private static async Task CheckCleanAsync(string path)
    {
        await using var img = await Qcow2Image.OpenAsync(FileStorage.Open(path, new FileStorageOptions(ReadOnly: true)), new Qcow2OpenOptions { ForCheck = true });
        var r = await Qcow2Check.CheckAsync(img, Qcow2RepairMode.None);
        Assert.True(r.ExitCode == 0, $"{path}: check found {r.Corruptions} corruptions, {r.Leaks} leaks: {string.Join("; ", r.Messages.Take(5))}");
    }
}
