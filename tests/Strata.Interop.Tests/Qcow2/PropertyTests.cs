using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Text;
using Strata.Interop.Tests.Oracle;
using Strata.Interop.Tests.Qcow2.Model;
using Xunit;
using Xunit.Abstractions;

namespace Strata.Interop.Tests.Qcow2;

/// <summary>
/// Differential property tests: random chains (0–3 backing layers, written by qemu-io or Strata) and random op
/// sequences on the top image over the matrix cluster size × refcount_bits × compat × extended_l2, applied by
/// Strata, by qemu-io, or alternately by both, checked against an in-memory model after every Strata op and
/// against QEMU (qemu-img check, qemu-img convert) at the end.
/// <para>
/// Each run draws a fresh base seed (printed); sequence i uses seed base+i. Knobs (environment):
/// STRATA_SEED replays one sequence seed (with the test of the same mode), STRATA_PROPERTY_BASE_SEED fixes the
/// base seed, STRATA_PROPERTY_SEQUENCES scales the number of sequences (a factor, e.g. 0.5 or 4).
/// </para>
/// </summary>
public sealed class PropertyTests(ITestOutputHelper output)
{
    private static readonly TimeSpan ShrinkBudget = TimeSpan.FromSeconds(40);

    /// <summary>Strata writes the top image (the main direction): 200 sequences.</summary>
    [Fact]
    public Task StrataAppliedSequences() => RunManyAsync(ScenarioMode.Strata, 200);

    /// <summary>qemu-io writes the top image, Strata reads it: 100 sequences.</summary>
    [Fact]
    public Task QemuAppliedSequences() => RunManyAsync(ScenarioMode.Qemu, 100);

    /// <summary>qemu-io and Strata take turns on the same image: 60 sequences.</summary>
    [Fact]
    public Task MixedSequences() => RunManyAsync(ScenarioMode.Mixed, 60);

    private async Task RunManyAsync(ScenarioMode mode, int defaultCount, [CallerMemberName] string test = "")
    {
        QemuTools.RequireTools();
        int[] seeds;
        int baseSeed = 0;
        if (Environment.GetEnvironmentVariable("STRATA_SEED") is { Length: > 0 } one)
            seeds = [int.Parse(one, CultureInfo.InvariantCulture)];
        else
        {
            baseSeed = Environment.GetEnvironmentVariable("STRATA_PROPERTY_BASE_SEED") is { Length: > 0 } b
                ? int.Parse(b, CultureInfo.InvariantCulture)
                : Random.Shared.Next(1, int.MaxValue / 2);
            double scale = Environment.GetEnvironmentVariable("STRATA_PROPERTY_SEQUENCES") is { Length: > 0 } sc
                ? double.Parse(sc, CultureInfo.InvariantCulture)
                : 1.0;
            int count = Math.Max(1, (int)(defaultCount * scale));
            seeds = [.. Enumerable.Range(0, count).Select(i => baseSeed + i)];
        }
        output.WriteLine($"{test}: {seeds.Length} sequences, base seed {baseSeed}{(seeds.Length == 1 ? $" (replaying seed {seeds[0]})" : "")}");

        var sw = Stopwatch.StartNew();
        var failures = new ConcurrentBag<(Scenario Scenario, Failure Failure)>();
        var coverage = new ConcurrentDictionary<string, int>();
        int totalOps = 0;
        await Parallel.ForEachAsync(seeds, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(2, Environment.ProcessorCount) }, async (seed, _) =>
        {
            var s = ScenarioGenerator.Generate(seed, mode);
            var top = s.Top.Config;
            coverage.AddOrUpdate($"cluster {top.ClusterSize,7}, v{top.Version}, refcount_bits {top.RefcountBits,2}, extended_l2 {(top.ExtendedL2 ? "on " : "off")}", 1, (_, v) => v + 1);
            coverage.AddOrUpdate($"backing layers: {s.Layers.Count - 1}", 1, (_, v) => v + 1);
            coverage.AddOrUpdate($"small caches: {s.SmallCaches}", 1, (_, v) => v + 1);
            Interlocked.Add(ref totalOps, s.Layers.Sum(l => l.Ops.Count));
            var f = await ScenarioRunner.RunAsync(s);
            if (f != null)
            {
                failures.Add((s, f));
                output.WriteLine($"seed {seed} FAILED [{f.Category}]");
            }
        });
        output.WriteLine($"{seeds.Length} sequences ({totalOps} ops) in {sw.Elapsed.TotalSeconds:0.0} s; {failures.Count} failed");
        foreach (var kv in coverage.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            output.WriteLine($"  {kv.Key}: {kv.Value}");

        if (failures.IsEmpty)
            return;

        var sorted = failures.OrderBy(x => x.Scenario.Seed).ToList();
        var report = new StringBuilder();
        report.AppendLine($"{sorted.Count} of {seeds.Length} sequences failed (base seed {baseSeed}).");
        report.AppendLine($"Replay one: STRATA_SEED=<seed> dotnet test tests/Strata.Interop.Tests --filter \"FullyQualifiedName~PropertyTests.{test}\"");
        report.AppendLine("Failing seeds: " + string.Join(", ", sorted.Select(x => $"{x.Scenario.Seed} [{x.Failure.Category}]")));
        // Shrink the first failure of each category (two at most: shrinking re-runs whole scenarios).
        var shrinkSw = Stopwatch.StartNew();
        int shown = 0;
        foreach (var group in sorted.GroupBy(x => x.Failure.Category))
        {
            if (shown++ == 3)
                break;
            var (s, f) = group.First();
            report.AppendLine();
            report.AppendLine($"=== seed {s.Seed} ({group.Count()} seeds failed with [{f.Category}]) ===");
            report.AppendLine(f.ToString());
            report.AppendLine(s.Describe());
            if (shown <= 2 && shrinkSw.Elapsed < ShrinkBudget * 2)
            {
                var (small, sf, runs) = await ScenarioRunner.ShrinkAsync(s, f, ShrinkBudget);
                report.AppendLine($"--- shrunk ({runs} re-runs) to: ---");
                report.AppendLine(sf.ToString());
                report.AppendLine(small.Describe());
            }
        }
        output.WriteLine(report.ToString());
        Assert.Fail(report.ToString());
    }
}
