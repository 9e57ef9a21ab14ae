using System.Text.Json.Nodes;
using Strata.Images;
using Strata.Images.Bitmaps;
using Strata.Images.Chain;
using Strata.Images.Format;
using Strata.Images.Qcow2;
using Strata.Images.Storage;
using Strata.Interop.Tests.Bitmaps;
using Strata.Interop.Tests.Qcow2.OpsModel;
using Xunit;
using Xunit.Abstractions;

namespace Strata.Interop.Tests.Qcow2;

/// <summary>
/// Issue 4, acceptance test 1: one model-based property test of how the image operations interact. Random sequences
/// of guest writes, zero writes and discards, snapshot create / delete / apply, bitmap add / remove / clear / enable /
/// disable, close and reopen, resize, amend (compat and refcount_bits), safe rebase and commit run on an overlay
/// (with or without a base image below it) through Strata's library; after every step the library's view (active
/// disk, every snapshot by ID and by name, every bitmap's bits, header settings) is compared with an in-memory model
/// that follows QEMU 7.2's rules, refusals included (no bitmaps on v2, no snapshot apply while any bitmap exists, no
/// resize of a v2 image with snapshots, no downgrade while a snapshot has another disk size, ...). Every 19th final
/// image goes through qemu-img check and QEMU reads every snapshot, the active disk and one bitmap.
/// STRATA_SEED=n replays a whole run; STRATA_SEQUENCE=i runs only sequence i of it.
/// </summary>
public sealed class ImageOperationsModelTests(ITestOutputHelper output)
{
    private sealed record Config(string Label, int Version, int ClusterSize, bool ExtendedL2, int RefcountBits);

    private static readonly Config[] Configs =
    [
        new("v3 64k", 3, 65536, false, 16),
        new("v3 4k", 3, 4096, false, 16),
        new("v3 64k extended-l2", 3, 65536, true, 16),
        new("v2 64k", 2, 65536, false, 16),
        new("v3 64k refcount_bits=1", 3, 65536, false, 1),
        new("v3 4k refcount_bits=64", 3, 4096, false, 64),
    ];

    private const int Sequences = 240;
    private const long Mib = 1 << 20;
    private static readonly FileStorageOptions Unsafe = new(ReadOnly: false, Direct: false, NoFlush: true);
    private static readonly ImageOpenOptions OpenRw = new() { Format = "qcow2", NoFlush = true };

    [Fact]
    public async Task RandomOperationSequences_MatchTheModelAndQemu()
    {
        QemuTools.RequireTools("qemu-img", "qemu-nbd", "nbdinfo");
        int seed = Environment.GetEnvironmentVariable("STRATA_SEED") is { Length: > 0 } s ? int.Parse(s) : Random.Shared.Next();
        int? only = Environment.GetEnvironmentVariable("STRATA_SEQUENCE") is { Length: > 0 } q ? int.Parse(q) : null;
        output.WriteLine($"STRATA_SEED={seed}");
        using var dir = new TempDir("opsmodel");
        var master = new Random(seed);
        int steps = 0, qemuChecked = 0;
        var counts = new Dictionary<string, int>();
        for (int seq = 0; seq < Sequences; seq++)
        {
            int seqSeed = master.Next();
            if (only is { } o && o != seq)
                continue;
            var cfg = Configs[seq % Configs.Length];
            bool withBase = (seq / Configs.Length) % 2 == 1;
            // Every 19th: the verified sequences go round all configurations, with and without a base image.
            bool verifyWithQemu = seq % 19 == 0 || only != null;
            string sub = Path.Combine(dir.Path, $"s{seq}");
            Directory.CreateDirectory(sub);
            var run = new SequenceRun(sub, new Random(seqSeed), cfg, withBase, counts);
            try
            {
                await run.RunAsync();
                if (verifyWithQemu)
                {
                    run.VerifyWithQemu();
                    qemuChecked++;
                }
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                throw new Xunit.Sdk.XunitException(
                    $"STRATA_SEED={seed} STRATA_SEQUENCE={seq} ({cfg.Label}, base {withBase}) failed at step {run.Trace.Count}:\n" +
                    string.Join("\n", run.Trace.TakeLast(25)) + $"\n{e}");
            }
            steps += run.Trace.Count;
            Directory.Delete(sub, recursive: true);
        }
        output.WriteLine($"{(only != null ? 1 : Sequences)} sequences, {steps} steps, {qemuChecked} verified with QEMU");
        output.WriteLine(string.Join(", ", counts.OrderBy(kv => kv.Key).Select(kv => $"{kv.Key} {kv.Value}")));
    }

    /// <summary>One sequence: the images, the model, and the operations on them.</summary>
    private sealed class SequenceRun(string dir, Random rng, Config cfg, bool withBase, Dictionary<string, int> counts)
    {
        private readonly string _top = Path.Combine(dir, "top.qcow2");
        private readonly string _base = Path.Combine(dir, "base.qcow2");
        private readonly ImageOpsModel _m = new() { ClusterSize = cfg.ClusterSize, ExtendedL2 = cfg.ExtendedL2, Version = cfg.Version, RefcountBits = cfg.RefcountBits };
        private Qcow2Image _img = null!;
        private int _names;
        public List<string> Trace { get; } = [];

        private Qcow2CreateOptions Options(long size) => new()
        {
            Size = size, Version = cfg.Version, ClusterSize = cfg.ClusterSize, ExtendedL2 = cfg.ExtendedL2, RefcountBits = cfg.RefcountBits,
        };

        public async Task RunAsync()
        {
            long size = rng.Next(1, 5) * (Mib / 2);
            if (withBase)
            {
                var b = new byte[size];
                rng.NextBytes(b.AsSpan(0, (int)(size / 2)));
                await using (var bi = await Qcow2Creator.CreateAsync(FileStorage.Create(_base, Unsafe), Options(size)))
                    await bi.WriteAsync(b, 0);
                _m.Base = b;
                _m.Backed = true;
            }
            await using (await Qcow2Creator.CreateAsync(FileStorage.Create(_top, Unsafe),
                Options(size) with { BackingFile = withBase ? _base : null, BackingFormat = withBase ? "qcow2" : null }))
            {
            }
            _m.Active = _m.BackingView(size);
            _img = await OpenAsync();
            try
            {
                for (int n = rng.Next(20, 41), step = 0; step < n; step++)
                {
                    string what = await StepAsync();
                    Trace.Add($"{step}: {what}");
                    string kind = what.Split(' ')[0] + (what.Contains(" refused", StringComparison.Ordinal) ? " refused"
                        : what.Contains(" skipped", StringComparison.Ordinal) ? " skipped" : "");
                    counts[kind] = counts.GetValueOrDefault(kind) + 1;
                    // Snapshots are read back after every step but plain guest writes (there every fourth time).
                    await VerifyAsync(snapshots: kind is not ("write" or "zero" or "discard") || step % 4 == 0);
                }
                await VerifyAsync(snapshots: true);
            }
            finally
            {
                await _img.DisposeAsync();
            }
            // What was stored at close loads back the same.
            _img = await OpenAsync();
            try
            {
                await VerifyAsync(snapshots: true);
            }
            finally
            {
                await _img.DisposeAsync();
            }
        }

        private async Task<Qcow2Image> OpenAsync() => (Qcow2Image)await ImageOpener.OpenAsync(_top, OpenRw);

        private async Task ReopenAsync()
        {
            await _img.DisposeAsync();
            _img = await OpenAsync();
        }

        private (long Off, long Len) RandomRange()
        {
            long off = rng.NextInt64(_m.Size / 512) * 512;
            if (rng.Next(4) == 0)
                off += rng.Next(1, 512); // unaligned requests too
            off = Math.Min(off, _m.Size - 1);
            long len = Math.Min(_m.Size - off, rng.Next(4) == 0 ? rng.Next(1, 4096) : rng.Next(1, 256) * 512L);
            return (off, len);
        }

        private SnapshotModel? PickSnapshot() => _m.Snapshots.Count == 0 ? null : _m.Snapshots[rng.Next(_m.Snapshots.Count)];

        private BitmapModel? PickBitmap() => _m.Bitmaps.Count == 0 ? null : _m.Bitmaps[rng.Next(_m.Bitmaps.Count)];

        private async Task<string> StepAsync()
        {
            int op = rng.Next(100);
            if (op < 24)
            {
                var (off, len) = RandomRange();
                var data = new byte[len];
                rng.NextBytes(data);
                await _img.WriteAsync(data, off);
                data.CopyTo(_m.Active, off);
                _m.MarkEnabled(off, len);
                return $"write {off} {len}";
            }
            if (op < 30)
            {
                var (off, len) = RandomRange();
                var flags = rng.Next(2) == 0 ? ZeroFlags.MayUnmap : ZeroFlags.None;
                await _img.WriteZeroesAsync(off, len, flags);
                _m.ZeroAllocWritten |= _m.Version >= 3 && flags == ZeroFlags.None;
                Array.Clear(_m.Active, (int)off, (int)len);
                _m.MarkEnabled(off, len);
                return $"zero {off} {len} {flags}";
            }
            if (op < 34)
            {
                // What a discarded range reads as is up to the format (the backing file may show through): the model
                // takes it from the image; the snapshots and the rest of the disk must not change.
                var (off, len) = RandomRange();
                await _img.DiscardAsync(off, len);
                await _img.ReadAsync(_m.Active.AsMemory((int)off, (int)len), off);
                _m.MarkEnabled(off, len);
                return $"discard {off} {len}";
            }
            if (op < 44)
            {
                if (_m.Snapshots.Count >= 3)
                    return "create skipped (3 snapshots)";
                string name = $"sn{_names++}";
                Qcow2Snapshot? created = null;
                if (await RefcountsMayOverflowAsync(async () => created = await _img.CreateSnapshotAsync(new Qcow2SnapshotCreateInfo { Name = name })))
                    return $"create {name} refused (refcount_bits={_m.RefcountBits})";
                var sn = created!;
                Assert.Equal((1 + _m.Snapshots.Select(x => int.Parse(x.Id)).DefaultIfEmpty(0).Max()).ToString(), sn.Id);
                _m.Snapshots.Add(new SnapshotModel(sn.Id, name, (byte[])_m.Active.Clone()));
                return $"create {sn.Id} {name}";
            }
            if (op < 50)
            {
                if (PickSnapshot() is not { } sn)
                    return "delete skipped (none)";
                bool byName = rng.Next(2) == 0;
                var gone = await _img.DeleteSnapshotAsync(byName ? null : sn.Id, byName ? sn.Name : null);
                Assert.Equal(sn.Id, gone.Id);
                _m.Snapshots.Remove(sn);
                return $"delete {(byName ? sn.Name : sn.Id)}";
            }
            if (op < 57)
            {
                if (PickSnapshot() is not { } sn)
                    return "apply skipped (none)";
                string key = rng.Next(2) == 0 ? sn.Name : sn.Id;
                if (_m.Bitmaps.Count > 0)
                {
                    // bdrv_snapshot_goto refuses while the node has any dirty bitmap, enabled or not.
                    var e = await Assert.ThrowsAsync<SnapshotException>(async () => await _img.ApplySnapshotAsync(key));
                    Assert.Equal("Device has active dirty bitmaps", e.Message);
                    return $"apply {key} refused (bitmaps)";
                }
                if (await RefcountsMayOverflowAsync(() => _img.ApplySnapshotAsync(key)))
                    return $"apply {key} refused (refcount_bits={_m.RefcountBits})";
                _m.Active = (byte[])sn.Data.Clone();
                if (sn.KnownLength < sn.Data.Length)
                    await _img.ReadAsync(_m.Active.AsMemory((int)sn.KnownLength), sn.KnownLength);
                return $"apply {key}";
            }
            if (op < 65)
            {
                if (_m.Bitmaps.Count >= 3)
                    return "bitmap-add skipped (3 bitmaps)";
                string name = $"bm{_names++}";
                int gb = rng.Next(9, 18);
                bool disabled = rng.Next(3) == 0;
                if (_m.Version < 3)
                {
                    var e = await Assert.ThrowsAsync<BitmapException>(async () => await _img.AddDirtyBitmapAsync(name, 1u << gb, persistent: true, disabled: disabled));
                    Assert.Contains("Cannot store dirty bitmaps in qcow2 v2 files", e.Message, StringComparison.Ordinal);
                    return $"bitmap-add {name} refused (v2)";
                }
                await _img.AddDirtyBitmapAsync(name, 1u << gb, persistent: true, disabled: disabled);
                _m.Bitmaps.Add(new BitmapModel(name, gb, _m.Size, !disabled));
                return $"bitmap-add {name} granularity 2^{gb}{(disabled ? " disabled" : "")}";
            }
            if (op < 68)
            {
                if (PickBitmap() is not { } b)
                    return "bitmap-remove skipped (none)";
                await _img.RemoveDirtyBitmapAsync(b.Name);
                _m.Bitmaps.Remove(b);
                return $"bitmap-remove {b.Name}";
            }
            if (op < 72)
            {
                if (PickBitmap() is not { } b)
                    return "bitmap-toggle skipped (none)";
                if (rng.Next(3) == 0)
                {
                    DirtyBitmapSet.ClearBits(_img.DirtyBitmaps.Lookup(b.Name));
                    Array.Clear(b.Bits);
                    return $"bitmap-clear {b.Name}";
                }
                b.Enabled = !b.Enabled;
                _img.DirtyBitmaps.SetEnabled(_img.DirtyBitmaps.Lookup(b.Name), b.Enabled);
                return $"bitmap-toggle {b.Name} {(b.Enabled ? "enable" : "disable")}";
            }
            if (op < 76)
            {
                await ReopenAsync();
                return "reopen";
            }
            if (op < 82)
                return await ResizeAsync();
            if (op < 90)
                return await AmendAsync();
            if (op < 95)
                return withBase ? await RebaseAsync() : "rebase skipped (no base)";
            return withBase ? await CommitAsync() : "commit skipped (no base)";
        }

        /// <summary>
        /// Runs a snapshot operation that adds a reference to shared clusters. With narrow refcounts it may be refused
        /// (nothing changed) when a cluster could be referenced by the active image and every snapshot at once more
        /// often than the width allows; otherwise it must succeed. Returns whether it was refused.
        /// </summary>
        private async Task<bool> RefcountsMayOverflowAsync(Func<ValueTask<Qcow2Snapshot>> op)
        {
            bool mayOverflow = _m.Snapshots.Count + 2 > (1L << _m.RefcountBits) - 1;
            try
            {
                await op();
                return false;
            }
            catch (SnapshotException e) when (mayOverflow)
            {
                Assert.Matches($"^Refcount of cluster [0-9]+ would exceed the {_m.RefcountBits}-bit maximum$", e.Message);
                return true;
            }
        }

        private async Task<string> ResizeAsync()
        {
            long newSize = rng.Next(1, 5) * (Mib / 2) - (rng.Next(3) == 0 ? rng.Next(1, 64) * 512L : 0);
            if (_m.Version < 3 && _m.Snapshots.Count > 0)
            {
                var e = await Assert.ThrowsAsync<ImageException>(async () => await _img.ResizeAsync(newSize, allowShrink: true));
                Assert.Contains("Can't resize a v2 image which has snapshots", e.Message, StringComparison.Ordinal);
                return $"resize {newSize} refused (v2 with snapshots)";
            }
            long oldSize = _m.Size;
            // bdrv_co_truncate zeroes the new area explicitly only when the backing file is longer than the old size.
            bool zeroWrite = newSize > oldSize && _m.Backed && _m.Base!.Length > oldSize;
            if (zeroWrite && _m.Version < 3)
            {
                // v2 has no zero clusters: QEMU fails ("Failed to zero out new clusters"); Strata refuses up front.
                var e = await Assert.ThrowsAsync<ImageException>(async () => await _img.ResizeAsync(newSize, allowShrink: true));
                Assert.Equal("Failed to zero out new clusters: Operation not supported", e.Message);
                return $"resize {newSize} refused (v2 cannot zero the new area)";
            }
            await _img.ResizeAsync(newSize, allowShrink: true);
            _m.Resize(newSize);
            _m.ZeroAllocWritten |= zeroWrite;
            if (newSize > oldSize && !zeroWrite)
            {
                // A shrink drops only whole clusters: the rest of the last cluster keeps what it held and shows again
                // when the disk grows back (QEMU 7.2 does the same). What that is, is up to the format: the model takes
                // it from the image (qemu-img compare at the end checks QEMU reads the same); past it, zeroes.
                long staleEnd = Math.Min(newSize, (oldSize + cfg.ClusterSize - 1) / cfg.ClusterSize * cfg.ClusterSize);
                if (staleEnd > oldSize)
                    await _img.ReadAsync(_m.Active.AsMemory((int)oldSize, (int)(staleEnd - oldSize)), oldSize);
            }
            return $"resize {newSize}{(zeroWrite ? " (zeroed)" : "")}";
        }

        private async Task<string> AmendAsync()
        {
            switch (rng.Next(3))
            {
                case 0 when _m.Version == 3:
                {
                    // Downgrade: QEMU's checks in its order.
                    string? refusal =
                        _m.RefcountBits != 16 ? "compat=0.10 requires refcount_bits=16"
                        : _m.Snapshots.Any(s => s.Data.Length != _m.Size) ? "Internal snapshots prevent downgrade of image"
                        : _m.ExtendedL2 ? "Cannot downgrade an image with incompatible features 0x10 set"
                        : null;
                    if (refusal != null)
                    {
                        var e = await Assert.ThrowsAsync<AmendException>(async () => await _img.AmendAsync(new Qcow2AmendOptions { Version = 2 }));
                        Assert.Equal(refusal, e.Message);
                        return $"amend compat=0.10 refused ({refusal})";
                    }
                    if (_m.ZeroAllocWritten && _m.Snapshots.Count > 0)
                        return "amend compat=0.10 skipped (QEMU 7.2 would zero clusters a snapshot shares)";
                    await _img.AmendAsync(new Qcow2AmendOptions { Version = 2 });
                    _m.Version = 2;
                    // The autoclear bit goes: the bitmaps are no more (their clusters leak, as with QEMU).
                    if (_m.Bitmaps.Count > 0)
                        _m.LeaksExpected = true;
                    _m.Bitmaps.Clear();
                    await ReopenAsync();
                    return "amend compat=0.10";
                }
                case 0:
                    await _img.AmendAsync(new Qcow2AmendOptions { Version = 3 });
                    _m.Version = 3;
                    return "amend compat=1.1";
                default:
                {
                    int bits = 1 << rng.Next(0, 7);
                    if (_m.Version < 3 && bits != 16)
                    {
                        var e = await Assert.ThrowsAsync<AmendException>(async () => await _img.AmendAsync(new Qcow2AmendOptions { RefcountBits = bits }));
                        Assert.StartsWith("Refcount widths other than 16 bits require compatibility level 1.1", e.Message, StringComparison.Ordinal);
                        return $"amend refcount_bits={bits} refused (v2)";
                    }
                    try
                    {
                        await _img.AmendAsync(new Qcow2AmendOptions { RefcountBits = bits });
                    }
                    catch (AmendException e) when (bits < _m.RefcountBits && _m.Snapshots.Count > 0)
                    {
                        // Only shared clusters (snapshots) can have a refcount above 1 here.
                        Assert.StartsWith($"Cannot decrease refcount entry width to {bits} bits: Cluster at offset 0x", e.Message, StringComparison.Ordinal);
                        return $"amend refcount_bits={bits} refused ({e.Message})";
                    }
                    _m.RefcountBits = bits;
                    return $"amend refcount_bits={bits}";
                }
            }
        }

        /// <summary>QEMU's allocation map of the top (qemu-img map; the image is closed): which 512-byte sectors it holds.</summary>
        private bool[] QemuAllocation()
        {
            var r = QemuTools.QemuImg("map", "--output=json", "-f", "qcow2", _top).EnsureSuccess();
            var held = new bool[(_m.Size + 511) / 512];
            foreach (var e in JsonNode.Parse(r.StdOut)!.AsArray())
                if ((int)e!["depth"]! == 0 && (bool)e["present"]!)
                    for (long s = (long)e["start"]! / 512; s < ((long)e["start"]! + (long)e["length"]! + 511) / 512; s++)
                        held[s] = true;
            return held;
        }

        /// <summary>
        /// Safe rebase onto the base image or onto nothing. The active disk reads the same; QEMU writes (and so marks in
        /// the enabled bitmaps) each run of sectors the top does not hold where the old and new backing differ.
        /// </summary>
        private async Task<string> RebaseAsync()
        {
            bool toBase = !_m.Backed;
            await _img.DisposeAsync();
            var held = QemuAllocation();
            var oldView = _m.BackingView(_m.Size);
            _m.Backed = toBase;
            var newView = _m.BackingView(_m.Size);
            for (long s = 0; s < held.Length; s++)
            {
                int o = (int)(s * 512), n = (int)Math.Min(512, _m.Size - o);
                if (!held[s] && !oldView.AsSpan(o, n).SequenceEqual(newView.AsSpan(o, n)))
                    _m.MarkEnabled(o, n);
            }
            var img = (Qcow2Image)await ImageOpener.OpenAsync(_top, OpenRw);
            var oldBacking = img.Backing;
            IImage? target = toBase ? await ImageOpener.OpenAsync(_base, new ImageOpenOptions { Format = "qcow2", ReadOnly = true, NoFlush = true }) : null;
            try
            {
                await Rebase.RebaseAsync(img, target, toBase ? _base : null, toBase ? "qcow2" : null, safe: true);
            }
            finally
            {
                await img.DisposeAsync();
                if (oldBacking != null)
                    await oldBacking.DisposeAsync();
            }
            await RefreshSnapshotsFromQemuAsync();
            _img = await OpenAsync();
            Assert.Equal(toBase ? _base : null, _img.BackingFileName);
            return $"rebase onto {(toBase ? "base" : "nothing")}";
        }

        /// <summary>Commit of the top into the base (same size only), then maybe emptying the top (whose bitmaps QEMU leaves alone).</summary>
        private async Task<string> CommitAsync()
        {
            if (!_m.Backed || _m.Base!.Length != _m.Size)
                return "commit skipped (no backing of the same size)";
            bool empty = rng.Next(2) == 0;
            await _img.DisposeAsync();
            var img = (Qcow2Image)await ImageOpener.OpenAsync(_top, OpenRw);
            var readOnlyBase = img.Backing!;
            var writableBase = await ImageOpener.OpenAsync(_base, OpenRw);
            try
            {
                img.SetBacking(writableBase);
                await Commit.CommitAsync(img, writableBase);
                img.SetBacking(readOnlyBase);
                await writableBase.DisposeAsync();
                if (empty)
                    Assert.True(await Commit.MakeEmptyAsync(img));
            }
            finally
            {
                await img.DisposeAsync();
            }
            // Wherever the top held anything the base now holds what the top read; elsewhere the top read the base.
            _m.Base = (byte[])_m.Active.Clone();
            await RefreshSnapshotsFromQemuAsync();
            _img = await OpenAsync();
            return $"commit{(empty ? " and empty" : "")}";
        }

        /// <summary>
        /// A snapshot reads what it does not hold from the backing file, and rebase and commit change that. The model
        /// cannot know what a snapshot holds, so it takes QEMU's reading of every snapshot now (its current-size view).
        /// </summary>
        private Task RefreshSnapshotsFromQemuAsync()
        {
            foreach (var sn in _m.Snapshots)
            {
                var q = QemuSnapshot(sn.Id);
                Array.Copy(q, sn.Data, Math.Min(q.Length, sn.Data.Length));
                sn.KnownLength = Math.Min(sn.KnownLength, q.Length);
            }
            return Task.CompletedTask;
        }

        private byte[] QemuSnapshot(string id)
        {
            string raw = Path.Combine(dir, $"snap{id}.raw");
            QemuTools.QemuImg("convert", "-f", "qcow2", "-O", "raw", "-l", $"snapshot.id={id}", _top, raw).EnsureSuccess();
            var b = File.ReadAllBytes(raw);
            File.Delete(raw);
            return b;
        }

        private async Task VerifyAsync(bool snapshots)
        {
            var h = _img.Header;
            Assert.True(_img.Size == _m.Size, $"size {_img.Size}, model {_m.Size}");
            Assert.Equal(_m.Version, h.Version);
            Assert.Equal(_m.RefcountBits, 1 << h.RefcountOrder);
            Assert.Equal(_m.Backed ? _base : null, _img.BackingFileName);
            var buf = new byte[_m.Size];
            await _img.ReadAsync(buf, 0);
            AssertSame(_m.Active, buf, "active disk");

            Assert.Equal(_m.Bitmaps.Select(b => b.Name).Order(), _img.DirtyBitmaps.All.Select(b => b.Name!).Order());
            foreach (var mb in _m.Bitmaps)
            {
                var b = _img.DirtyBitmaps.Lookup(mb.Name);
                Assert.True(mb.Enabled == b.Enabled, $"bitmap {mb.Name}: enabled {b.Enabled}, model {mb.Enabled}");
                Assert.Equal(1u << mb.GranBits, b.Granularity);
                var got = b.Extents().Where(e => e.Dirty).Select(e => (e.Offset, e.Length)).ToList();
                Assert.True(mb.Dirty(_m.Size).SequenceEqual(got),
                    $"bitmap {mb.Name}: dirty {string.Join(' ', got)}, model {string.Join(' ', mb.Dirty(_m.Size))}");
            }

            var list = await _img.GetSnapshotsAsync();
            Assert.Equal(_m.Snapshots.Select(s => (s.Id, s.Name)).Order(), list.Select(s => (s.Id, s.Name)).Order());
            if (!snapshots)
                return;
            foreach (var sn in _m.Snapshots)
            {
                Assert.Equal((ulong)sn.Data.Length, list.Single(s => s.Id == sn.Id).DiskSize);
                bool byName = rng.Next(2) == 0;
                await using var view = await _img.OpenSnapshotAsync(byName ? null : sn.Id, byName ? sn.Name : null);
                // The view has the image's current size, as QEMU's load_tmp: compare what both cover.
                int n = (int)Math.Min(view.Size, sn.KnownLength);
                var got = new byte[n];
                await view.ReadAsync(got, 0);
                AssertSame(sn.Data.AsSpan(0, n).ToArray(), got, $"snapshot {sn.Id} ({sn.Name})");
            }
        }

        private static void AssertSame(byte[] expect, byte[] got, string what)
        {
            int i = expect.AsSpan().CommonPrefixLength(got);
            Assert.True(i == expect.Length, $"{what}: first difference at byte {i} (0x{i:x})");
        }

        /// <summary>The closed final image as QEMU sees it: check, every snapshot, the active disk, one bitmap.</summary>
        public void VerifyWithQemu()
        {
            var chk = Model.QemuOracle.Check(_top);
            if (_m.LeaksExpected)
                Assert.True(chk.NoCorruption, chk.ToString());
            else
                Assert.True(chk.Clean, chk.ToString());
            if (withBase)
                Assert.True(Model.QemuOracle.Check(_base).Clean, "base image");
            foreach (var sn in _m.Snapshots)
            {
                var q = QemuSnapshot(sn.Id);
                int n = (int)Math.Min(q.Length, sn.KnownLength);
                AssertSame(sn.Data.AsSpan(0, n).ToArray(), q.AsSpan(0, n).ToArray(), $"QEMU's snapshot {sn.Id}");
            }
            string raw = Path.Combine(dir, "model.raw");
            File.WriteAllBytes(raw, _m.Active);
            var cmp = QemuTools.QemuImg("compare", "-f", "raw", "-F", "qcow2", raw, _top);
            Assert.True(cmp.ExitCode == 0, $"qemu-img compare of the active disk: {cmp}");
            if (PickBitmap() is { } b)
                Assert.Equal(b.Dirty(_m.Size), BitmapOracle.QemuDirty(_top, b.Name));
        }
    }
}
