using Strata.Images.Qcow2;
using Strata.Interop.Tests.Oracle;
using Xunit;

namespace Strata.Interop.Tests.Qcow2;

/// <summary>
/// Random damage (fixed seeds) to refcounts, L1/L2 entries and the refcount table, including entries that point
/// into other metadata: for every image, check, -r leaks and -r all give the same counts, the same stderr lines
/// and the same file as qemu-img 7.2.
/// </summary>
public sealed class CheckFuzzTests
{
    public static TheoryData<string, int> Cases()
    {
        var data = new TheoryData<string, int>();
        foreach (var b in new[] { "default", "cs512-rc1", "extl2", "snapshots", "cs2M-rc64" })
            foreach (int seed in new[] { 1, 2, 3, 4 })
                data.Add(b, seed);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task RandomDamage_SameAsQemuImg(string baseImage, int seed)
    {
        QemuTools.RequireTools();
        using var dir = new TempDir("chkfuzz");
        string path = MakeBase(dir, baseImage);
        var rng = new Random(seed * 7919 + baseImage.Length);
        var raw = new RawQcow2(path);
        var done = new List<string>();
        int n = rng.Next(1, 4);
        for (int i = 0; i < n; i++)
            done.Add(Damage(raw, path, rng, meta: seed % 2 == 0));

        foreach (var mode in new[] { Qcow2RepairMode.None, Qcow2RepairMode.Leaks, Qcow2RepairMode.All })
        {
            string context = $"after damage {string.Join(", ", done)}";
            var (theirs, ours) = await CheckSupport.AssertSameCheck(path, mode, mode.ToString(), context);
            CheckSupport.AssertSameBytes(theirs, ours, context);
        }
    }

    private static string MakeBase(TempDir dir, string name)
    {
        const string io = "write -P 1 0 192k;write -P 2 1M 64k;write -z 2M 64k;write -P 3 5M 4k";
        switch (name)
        {
            case "default": return CheckMatchesQemuImgTests.MakeImage(dir, name, "", io, 64L << 20);
            case "cs512-rc1": return CheckMatchesQemuImgTests.MakeImage(dir, name, "cluster_size=512,refcount_bits=1", "write -P 1 0 8k;write -P 2 1M 2k", 8L << 20);
            case "extl2": return CheckMatchesQemuImgTests.MakeImage(dir, name, "extended_l2=on", "write -P 1 0 64k;write -P 2 68k 4k;write -P 3 1M 4k", 64L << 20);
            case "cs2M-rc64": return CheckMatchesQemuImgTests.MakeImage(dir, name, "cluster_size=2M,refcount_bits=64", "write -P 1 0 3M;write -P 2 20M 4k", 64L << 20);
            default:
                string p = CheckMatchesQemuImgTests.MakeImage(dir, name, "", "write -P 1 0 128k", 64L << 20);
                QemuTools.QemuImg("snapshot", "-c", "s1", p).EnsureSuccess();
                QemuTools.QemuIo("-c", "write -P 2 0 64k", p).EnsureSuccess();
                QemuTools.QemuImg("snapshot", "-c", "s2", p).EnsureSuccess();
                return p;
        }
    }

    /// <summary>One random change to the metadata; returns what it did (for the failure message).</summary>
    private static string Damage(RawQcow2 raw, string path, Random rng, bool meta)
    {
        int cs = raw.ClusterSize;
        long size = new FileInfo(path).Length;
        long refBlock = (long)(raw.ReadU64(raw.RefTableOffset) & ~0x1ffUL);
        var l2Tables = new List<long>();
        for (int i = 0; i < raw.L1Size; i++)
        {
            long l2 = (long)(raw.ReadU64(raw.L1EntryOffset(i)) & 0x00fffffffffffe00UL);
            if (l2 != 0)
                l2Tables.Add(l2);
        }
        long[] metadata = [0, raw.RefTableOffset, refBlock, raw.L1Offset, .. l2Tables];
        int entrySize = raw.ExtendedL2 ? 16 : 8;
        string[] kinds = meta ? ["meta-l1", "meta-l2", "meta-rt", "rc"] : ["rc", "rc", "l2", "l2", "l1", "rt", "grow"];
        switch (kinds[rng.Next(kinds.Length)])
        {
            case "rc":
            {
                long c = rng.Next(0, (int)Math.Min(size / cs + 3, 4096));
                ulong max = raw.RefcountOrder >= 6 ? ulong.MaxValue : (1UL << (1 << raw.RefcountOrder)) - 1;
                raw.SetRefcount(c, Math.Min(max, (ulong)rng.Next(0, 4)));
                return $"rc{c}";
            }
            case "l2" when l2Tables.Count > 0:
            {
                long at = l2Tables[rng.Next(l2Tables.Count)] + rng.Next(0, 48) * entrySize;
                ulong e = raw.ReadU64(at);
                switch (rng.Next(5))
                {
                    case 0: e ^= 1UL << 63; break;
                    case 1: e ^= 1; break;
                    case 2: e |= 1UL << new[] { 1, 5, 57 }[rng.Next(3)]; break;
                    case 3: e = (e & ~0x00fffffffffffe00UL) | (ulong)(rng.Next(1, (int)(size / cs) + 4) * (long)cs); break;
                    default:
                        if (raw.ExtendedL2)
                            raw.WriteU64(at + 8, raw.ReadU64(at + 8) ^ (1UL << rng.Next(64)));
                        break;
                }
                raw.WriteU64(at, e);
                return $"l2@{at:x}";
            }
            case "l1" when l2Tables.Count > 0:
            {
                int i = rng.Next(raw.L1Size);
                ulong e = raw.ReadU64(raw.L1EntryOffset(i));
                e = rng.Next(3) switch { 0 => e ^ (1UL << 63), 1 => e | (1UL << 58), _ => (1UL << 63) | (ulong)l2Tables[0] };
                raw.WriteU64(raw.L1EntryOffset(i), e);
                return $"l1[{i}]";
            }
            case "rt":
            {
                int i = rng.Next(4);
                ulong[] choices = [0, (ulong)refBlock, (ulong)(refBlock + cs), (ulong)((size / cs + 2) * cs), (ulong)refBlock | 1];
                raw.WriteU64(raw.RefTableOffset + i * 8, choices[rng.Next(choices.Length)]);
                return $"rt[{i}]";
            }
            case "grow":
                using (var f = File.OpenWrite(path))
                    f.SetLength(size + cs * rng.Next(1, 4));
                return "grow";
            case "meta-l1":
            {
                int i = rng.Next(raw.L1Size);
                raw.WriteU64(raw.L1EntryOffset(i), (1UL << 63) | (ulong)metadata[rng.Next(metadata.Length)]);
                return $"meta-l1[{i}]";
            }
            case "meta-l2" when l2Tables.Count > 0:
            {
                long at = l2Tables[rng.Next(l2Tables.Count)] + rng.Next(0, 16) * entrySize;
                raw.WriteU64(at, (1UL << 63) | (ulong)metadata[rng.Next(metadata.Length)]);
                return $"meta-l2@{at:x}";
            }
            case "meta-rt":
            {
                int i = rng.Next(3);
                long target = metadata[rng.Next(metadata.Length)];
                raw.WriteU64(raw.RefTableOffset + i * 8, (ulong)(target == 0 ? refBlock : target));
                return $"meta-rt[{i}]";
            }
        }
        return "none";
    }
}
