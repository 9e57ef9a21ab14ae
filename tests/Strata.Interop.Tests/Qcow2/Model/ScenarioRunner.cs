using System.Diagnostics;
using Strata.Images.Format;
using Strata.Images.Qcow2;
using Strata.Images.Storage;
using Strata.Interop.Tests.Oracle;

namespace Strata.Interop.Tests.Qcow2.Model;

/// <summary>Why a scenario failed. Shrinking keeps a smaller scenario only if it fails with the same <see cref="Category"/>.</summary>
public sealed record Failure(string Category, string Message)
{
    public override string ToString() => $"[{Category}] {Message}";
}

/// <summary>
/// Builds a scenario's chain in a scratch directory and applies its ops, checking Strata's reads against the
/// model after every Strata op and whenever Strata opens an image qemu-io wrote; at the end of each image,
/// qemu-img check (for anything Strata wrote) and QEMU's reads (qemu-img convert) against the model.
/// </summary>
public sealed class ScenarioRunner
{
    private const int MaxWindow = 16 << 20;
    private readonly Scenario _s;
    private readonly string _dir;
    private string _stage = "start";

    private ScenarioRunner(Scenario s, string dir)
    {
        _s = s;
        _dir = dir;
    }

    public static async Task<Failure?> RunAsync(Scenario s)
    {
        using var dir = new TempDir("prop");
        var runner = new ScenarioRunner(s, dir.Path);
        try
        {
            return await runner.RunCoreAsync();
        }
        catch (Exception e) when (e is ToolFailedException or ToolTimeoutException)
        {
            return new Failure("qemu-tool", $"{runner._stage}: {e.Message}");
        }
        catch (Exception e)
        {
            return new Failure($"exception:{e.GetType().Name}", $"{runner._stage}: {e}");
        }
    }

    private async Task<Failure?> RunCoreAsync()
    {
        byte[]? below = null;
        string? backing = null, backingFormat = null;
        int n = _s.Layers.Count;
        for (int li = 0; li < n; li++)
        {
            var layer = _s.Layers[li];
            var cfg = layer.Config;
            bool isTop = li == n - 1;
            string path = Path.Combine(_dir, Scenario.FileName(li, n, cfg));
            _stage = $"creating {Path.GetFileName(path)}";
            if (layer.CreatedByStrata)
            {
                await using var created = await Qcow2Creator.CreateAsync(FileStorage.Create(path, FileStorageOptions.Default), cfg.ToCreateOptions(backing, backingFormat));
            }
            else
                QemuOracle.Create(path, cfg, backing, backingFormat);

            var model = new DiskModel(cfg, below);
            var ops = layer.Ops;
            for (int i = 0; i < ops.Count;)
            {
                int j = i;
                while (j < ops.Count && ops[j].By == ops[i].By)
                    j++;
                var f = ops[i].By == Applier.Strata
                    ? await StrataRunAsync(li, path, model, i, j)
                    : QemuRun(li, path, model, i, j);
                if (f != null)
                    return f;
                i = j;
            }

            bool strataWrote = layer.CreatedByStrata || ops.Any(o => o.By == Applier.Strata && o.Kind is not (OpKind.Read or OpKind.Flush));
            if (cfg.IsQcow2 && (isTop || strataWrote))
            {
                _stage = $"qemu-img check {Path.GetFileName(path)}";
                var chk = QemuOracle.Check(path);
                if (!chk.Clean)
                    return new Failure("qemu-check", $"{Path.GetFileName(path)} is not clean after the sequence: {chk}");
            }
            if (isTop || strataWrote)
            {
                _stage = $"qemu-img convert {Path.GetFileName(path)}";
                var q = QemuOracle.ReadAll(path, _dir);
                var d = DiskModel.Compare(model.View, q, 0, cfg.DiscardUnit);
                if (d != null)
                    return new Failure(ops.All(o => o.By == Applier.Qemu) && !layer.CreatedByStrata && !strataWrote ? "qemu-disagrees-with-model" : "qemu-read",
                        $"QEMU (qemu-img convert) reads {Path.GetFileName(path)} differently from the model: {d}");
            }
            var rf = await StrataReadOnlyCheckAsync(li, path, model);
            if (rf != null)
                return rf;

            below = model.View;
            backing = Path.GetFileName(path);
            backingFormat = cfg.Format;
        }
        return null;
    }

    private ValueTask<IImage> OpenAsync(string path, ImageConfig cfg, bool readOnly) =>
        ImageOpener.OpenAsync(path, new ImageOpenOptions
        {
            Format = cfg.Format,
            ReadOnly = readOnly,
            L2CacheSize = _s.SmallCaches ? 2L * cfg.ClusterSize : null,
            RefcountCacheSize = _s.SmallCaches ? 2L * cfg.ClusterSize : null,
        });

    private async Task<Failure?> StrataRunAsync(int li, string path, DiskModel model, int from, int to)
    {
        var cfg = model.Config;
        var ops = _s.Layers[li].Ops;
        string name = Path.GetFileName(path);
        IImage? img = null;
        try
        {
            _stage = $"{name}: Strata opening read-write before op #{from}";
            img = await OpenAsync(path, cfg, readOnly: false);
            if (from > 0)
            {
                // What qemu-io wrote (or an earlier Strata session left) must read back exactly.
                var f = await CompareAllAsync(img, model, "strata-read-after-reopen", $"{name}: Strata, on opening before op #{from}");
                if (f != null)
                    return f;
            }
            for (int k = from; k < to; k++)
            {
                var op = ops[k];
                _stage = $"{name}: op #{k} {op}";
                switch (op.Kind)
                {
                    case OpKind.Write:
                        await img.WriteAsync(op.MakeData(), op.Offset, op.Fua ? WriteFlags.Fua : WriteFlags.None);
                        break;
                    case OpKind.Zero:
                        await img.WriteZeroesAsync(op.Offset, op.Length, (op.MayUnmap ? ZeroFlags.MayUnmap : 0) | (op.Fua ? ZeroFlags.Fua : 0));
                        break;
                    case OpKind.Discard:
                        await img.DiscardAsync(op.Offset, op.Length);
                        break;
                    case OpKind.Flush:
                        await img.FlushAsync();
                        break;
                    case OpKind.Reopen:
                        await img.DisposeAsync();
                        img = null;
                        img = await OpenAsync(path, cfg, readOnly: false);
                        break;
                    case OpKind.Read:
                    {
                        var buf = new byte[op.Length];
                        await img.ReadAsync(buf, op.Offset);
                        var d = DiskModel.Compare(model.View.AsSpan((int)op.Offset, (int)op.Length), buf, op.Offset, cfg.DiscardUnit);
                        if (d != null)
                            return new Failure("strata-read", $"{name}: op #{k} {op}: {d}");
                        break;
                    }
                    default:
                        throw new InvalidOperationException($"op {op} cannot be applied by Strata");
                }
                model.Apply(op);

                Failure? f;
                if (op.Kind == OpKind.Reopen)
                    f = await CompareAllAsync(img, model, "strata-read-after-reopen", $"{name}: after op #{k} {op}");
                else if (op.HasRange)
                    f = await CompareWindowAsync(img, model, op, $"{name}: after op #{k} {op}");
                else
                    f = null;
                if (f != null)
                    return f;
            }
            _stage = $"{name}: Strata reading everything after op #{to - 1}";
            var all = await CompareAllAsync(img, model, "strata-read", $"{name}: after op #{to - 1}, whole disk");
            if (all != null)
                return all;
            _stage = $"{name}: Strata closing after op #{to - 1}";
            var closing = img;
            img = null;
            await closing.DisposeAsync();
            return null;
        }
        catch (Exception e) when (e is not (ToolFailedException or ToolTimeoutException))
        {
            return new Failure($"strata-exception:{e.GetType().Name}", $"{_stage}: {e}");
        }
        finally
        {
            if (img != null)
            {
                try
                {
                    await img.DisposeAsync();
                }
                catch
                {
                    // The failure being reported matters more.
                }
            }
        }
    }

    private Failure? QemuRun(int li, string path, DiskModel model, int from, int to)
    {
        var cfg = model.Config;
        var ops = _s.Layers[li].Ops;
        string name = Path.GetFileName(path);
        int k = from;
        while (k < to)
        {
            // One qemu-io process per run of ops; a reopen starts the next one.
            var args = new List<string> { "-f", cfg.Format };
            int first = k;
            for (; k < to; k++)
            {
                var op = ops[k];
                if (op.Kind == OpKind.Reopen)
                {
                    k++;
                    break;
                }
                var cmd = op.QemuIoCommand(_dir, li * 1000 + k);
                if (cmd != null)
                    args.AddRange(["-c", cmd]);
                model.Apply(op);
                if (op.Kind == OpKind.WriteCompressed)
                {
                    // QEMU 7.2 itself corrupts images when one session writes a compressed cluster, then allocates
                    // (write, write -z), then writes another compressed cluster (it marks the image corrupt: "Preventing
                    // invalid write on metadata (overlaps with active L2 table)", or qemu-img check finds a COPIED data
                    // cluster with refcount 2). A fresh process forgets the partly used compressed cluster.
                    k++;
                    break;
                }
            }
            if (args.Count == 2)
                continue;
            args.Add(path);
            _stage = $"{name}: qemu-io applying ops #{first}..#{k - 1}";
            var res = QemuTools.QemuIo([.. args]);
            string output = res.StdOut + res.StdErr;
            if (res.ExitCode != 0 || output.Contains("failed", StringComparison.OrdinalIgnoreCase) || output.Contains("error", StringComparison.OrdinalIgnoreCase))
                return new Failure("qemu-io", $"{name}: qemu-io failed applying ops #{first}..#{k - 1}:{Environment.NewLine}{res}");
        }
        return null;
    }

    /// <summary>Read-only open: the whole disk, then some reads at random offsets (runs that start mid-cluster).</summary>
    private async Task<Failure?> StrataReadOnlyCheckAsync(int li, string path, DiskModel model)
    {
        string name = Path.GetFileName(path);
        _stage = $"{name}: Strata opening read-only for the final read";
        try
        {
            await using var img = await OpenAsync(path, model.Config, readOnly: true);
            if (img.Size != model.Config.Size)
                return new Failure("strata-size", $"{name}: Strata reports size {img.Size}, expected {model.Config.Size}");
            var f = await CompareAllAsync(img, model, "strata-read-final", $"{name}: read-only open after the sequence");
            if (f != null)
                return f;
            var r = new Random(_s.Seed ^ li);
            int cs = model.Config.DiscardUnit;
            for (int i = 0; i < 12; i++)
            {
                long off = r.NextInt64(model.Config.Size);
                long len = Math.Min(model.Config.Size - off, r.NextInt64(1, 3L * cs + 1));
                var buf = new byte[len];
                await img.ReadAsync(buf, off);
                var d = DiskModel.Compare(model.View.AsSpan((int)off, (int)len), buf, off, cs);
                if (d != null)
                    return new Failure("strata-read-final", $"{name}: read-only read {off} +{len}: {d}");
            }
            return null;
        }
        catch (Exception e)
        {
            return new Failure($"strata-exception:{e.GetType().Name}", $"{_stage}: {e}");
        }
    }

    private static async Task<Failure?> CompareWindowAsync(IImage img, DiskModel model, Op op, string where)
    {
        long cs = model.Config.DiscardUnit;
        long lo = Math.Max(0, op.Offset / cs * cs - cs);
        long hi = Math.Min(model.Config.Size, (op.Offset + op.Length + cs - 1) / cs * cs + cs);
        hi = Math.Min(hi, lo + MaxWindow);
        var buf = new byte[hi - lo];
        await img.ReadAsync(buf, lo);
        var d = DiskModel.Compare(model.View.AsSpan((int)lo, (int)(hi - lo)), buf, lo, (int)cs);
        return d == null ? null : new Failure("strata-read", $"{where}: reading back {lo} +{hi - lo}: {d}");
    }

    private static async Task<Failure?> CompareAllAsync(IImage img, DiskModel model, string category, string where)
    {
        var buf = new byte[model.Config.Size];
        await img.ReadAsync(buf, 0);
        var d = DiskModel.Compare(model.View, buf, 0, model.Config.DiscardUnit);
        return d == null ? null : new Failure(category, $"{where}: {d}");
    }

    /// <summary>
    /// Makes a failing scenario smaller while it keeps failing the same way: drops backing layers, then runs
    /// of ops (halving the run length), top image first.
    /// </summary>
    public static async Task<(Scenario Scenario, Failure Failure, int Runs)> ShrinkAsync(Scenario s, Failure f, TimeSpan budget)
    {
        var sw = Stopwatch.StartNew();
        int runs = 0;
        async Task<Failure?> Try(Scenario c)
        {
            runs++;
            var cf = await RunAsync(c);
            return cf != null && cf.Category == f.Category ? cf : null;
        }

        for (int li = s.Layers.Count - 2; li >= 0 && sw.Elapsed < budget; li--)
        {
            var c = s with { Layers = [.. s.Layers.Where((_, i) => i != li)] };
            if (await Try(c) is { } cf)
                (s, f) = (c, cf);
        }
        for (int li = s.Layers.Count - 1; li >= 0; li--)
        {
            int chunk = Math.Max(1, s.Layers[li].Ops.Count / 2);
            while (chunk >= 1 && sw.Elapsed < budget)
            {
                for (int start = 0; start < s.Layers[li].Ops.Count && sw.Elapsed < budget;)
                {
                    var ops = s.Layers[li].Ops;
                    var fewer = ops.Where((_, i) => i < start || i >= start + chunk).ToList();
                    var layers = s.Layers.ToList();
                    layers[li] = layers[li] with { Ops = fewer };
                    var c = s with { Layers = layers };
                    if (await Try(c) is { } cf)
                        (s, f) = (c, cf);
                    else
                        start += chunk;
                }
                chunk /= 2;
            }
        }
        return (s, f, runs);
    }
}
