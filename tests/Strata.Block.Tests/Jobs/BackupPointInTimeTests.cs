using System.Buffers.Binary;
using System.Text.Json.Nodes;
using Strata.Block.Jobs;
using Xunit;

namespace Strata.Block.Tests.Jobs;

/// <summary>
/// Backups under load, through the C# API: writers keep changing the source (versioned data, random offsets) while a
/// backup of each sync mode runs, and the target (with its backing chain, as qemu-img sees it after close) must equal
/// byte for byte the source as it was when the job started; the source must equal everything the writers wrote.
/// qemu-img compares against a raw dump of the test's model and checks every target.
/// </summary>
public sealed class BackupPointInTimeTests
{
    private const long DiskSize = 2 << 20;
    private const int Writers = 3;

    public enum Mode { Full, FullCompressed, Top, None, Incremental }

    public static TheoryData<Mode, int> Runs()
    {
        var d = new TheoryData<Mode, int>();
        foreach (var m in Enum.GetValues<Mode>())
            d.Add(m, 12); // 12 seeded runs each, 60 backups in all (the incremental mode runs two per seed)
        return d;
    }

    /// <summary>The test's idea of the disk: a writer owns every cluster i with i % Writers == its index, so per-writer order is total order.</summary>
    private sealed class Model
    {
        public readonly byte[] Bytes = new byte[DiskSize];
        public readonly HashSet<long> Written = [];
    }

    /// <summary>Writers that stop between writes when asked (so the model is exact at the moment a job starts).</summary>
    private sealed class Load(BlockBackend disk, Model model, int seed)
    {
        private readonly SemaphoreSlim _paused = new(0);
        private volatile TaskCompletionSource? _hold;
        private int _version;
        private volatile bool _stop;
        private Task[] _tasks = [];
        public int Writes;

        public void Start() => _tasks = [.. Enumerable.Range(0, Writers).Select(i => Task.Run(() => WriterAsync(i)))];

        private async Task WriterAsync(int index)
        {
            var rng = new Random(seed * 31 + index);
            var buffer = new byte[64 * 1024];
            while (!_stop)
            {
                if (_hold is { } hold)
                {
                    _paused.Release();
                    await hold.Task;
                    continue;
                }
                long cluster = rng.Next((int)(DiskSize / 65536 / Writers)) * Writers + index;
                int len = rng.Next(1, 17) * 4096;
                long offset = cluster * 65536 + rng.Next(0, 65536 - len + 1) / 512 * 512;
                int v = Interlocked.Increment(ref _version);
                for (int i = 0; i < len; i += 8)
                {
                    BinaryPrimitives.WriteInt32LittleEndian(buffer.AsSpan(i), v);
                    BinaryPrimitives.WriteInt32LittleEndian(buffer.AsSpan(i + 4), (int)(offset + i));
                }
                if (rng.Next(8) == 0)
                {
                    await disk.WriteZeroesAsync(offset, len);
                    Array.Clear(model.Bytes, (int)offset, len);
                }
                else
                {
                    await disk.WriteAsync(buffer.AsMemory(0, len), offset);
                    buffer.AsSpan(0, len).CopyTo(model.Bytes.AsSpan((int)offset));
                }
                lock (model.Written)
                    model.Written.Add(cluster);
                Interlocked.Increment(ref Writes);
                await Task.Yield();
            }
        }

        /// <summary>Stops every writer between two writes; the model is then the disk.</summary>
        public async Task PauseAsync()
        {
            _hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            for (int i = 0; i < Writers; i++)
                await _paused.WaitAsync();
        }

        public void Resume()
        {
            var h = _hold!;
            _hold = null;
            h.SetResult();
        }

        public async Task StopAsync()
        {
            _stop = true;
            _hold?.SetResult();
            await Task.WhenAll(_tasks);
        }

        public async Task WaitWritesAsync(int count)
        {
            int target = Volatile.Read(ref Writes) + count;
            while (Volatile.Read(ref Writes) < target)
                await Task.Delay(2);
        }
    }

    private static JsonObject Qcow2(string node, string file, JsonNode? backing = null, bool noBacking = false)
    {
        var o = new JsonObject { ["driver"] = "qcow2", ["node-name"] = node, ["file"] = new JsonObject { ["driver"] = "file", ["filename"] = file } };
        if (backing is not null)
            o["backing"] = backing;
        else if (noBacking)
            o["backing"] = null;
        return o;
    }

    private static async Task RunToEndAsync(JobRegistry registry, Job job)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        registry.Events.Raised += e =>
        {
            if (ReferenceEquals(e.Job, job) && e is JobStatusChanged { Status: JobStatus.Null })
                done.TrySetResult();
        };
        registry.Start(job);
        await done.Task.WaitAsync(TimeSpan.FromSeconds(60));
        // The completion (filter removal included) ends inside the main loop's turn that raised the event.
        using (await registry.MainLoop.EnterAsync())
        {
        }
    }

    private static void AssertSame(string image, byte[] expected, string dir, string name)
    {
        string raw = Path.Combine(dir, name + ".raw");
        File.WriteAllBytes(raw, expected);
        QemuTools.QemuImg("check", "-q", image).EnsureSuccess();
        var r = QemuTools.QemuImg("compare", "-f", "qcow2", "-F", "raw", image, raw);
        Assert.True(r.ExitCode == 0, $"{name}: {r}");
    }

    [Theory]
    [MemberData(nameof(Runs))]
    public async Task The_target_is_the_source_at_the_start_of_the_job(Mode mode, int seeds)
    {
        var runs = Enumerable.Range(1, seeds).Select(seed => OneRunAsync(mode, seed));
        await Task.WhenAll(runs);
    }

    private static async Task OneRunAsync(Mode mode, int seed)
    {
        using var dir = new TempDir("pit");
        string src = dir.Combine("src.qcow2"), base0 = dir.Combine("base.qcow2"), tgt = dir.Combine("tgt.qcow2");
        var model = new Model();
        var rng = new Random(seed);
        // A first layer of data: in a backing file for sync=top, in the source itself otherwise.
        string seedFile = mode == Mode.Top ? base0 : src;
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", seedFile, DiskSize.ToString()).EnsureSuccess();
        var io = new List<string> { "-f", "qcow2" };
        for (int i = 0; i < 8; i++)
        {
            long off = rng.Next((int)(DiskSize / 65536)) * 65536L;
            int pattern = rng.Next(1, 250);
            io.AddRange(["-c", $"write -P {pattern} {off} 65536"]);
            model.Bytes.AsSpan((int)off, 65536).Fill((byte)pattern);
        }
        QemuTools.QemuIo([.. io, seedFile]).EnsureSuccess();
        if (mode == Mode.Top)
        {
            QemuTools.QemuImg("create", "-q", "-f", "qcow2", "-b", base0, "-F", "qcow2", src).EnsureSuccess();
            QemuTools.QemuImg("create", "-q", "-f", "qcow2", "-b", base0, "-F", "qcow2", tgt).EnsureSuccess();
        }
        else if (mode == Mode.None)
            QemuTools.QemuImg("create", "-q", "-f", "qcow2", "-b", src, "-F", "qcow2", tgt).EnsureSuccess();
        else
            QemuTools.QemuImg("create", "-q", "-f", "qcow2", tgt, DiskSize.ToString()).EnsureSuccess();

        byte[] atStart, atIncremental = [];
        string inc = dir.Combine("inc.qcow2");
        var registry = new JobRegistry(new MainLoop());
        var g = new BlockGraph();
        await using (g)
        {
            var source = await g.AddAsync(Qcow2("src", src));
            var target = await g.AddAsync(mode == Mode.None ? Qcow2("tgt", tgt, JsonValue.Create("src")) : Qcow2("tgt", tgt, noBacking: true));
            var disk = new BlockBackend("test", source, BlockPermissions.ConsistentRead | BlockPermissions.Write, BlockPermissions.All);
            var load = new Load(disk, model, seed);
            load.Start();
            await load.WaitWritesAsync(20);

            await load.PauseAsync();
            atStart = (byte[])model.Bytes.Clone();
            var sync = mode switch { Mode.Top => MirrorSyncMode.Top, Mode.None => MirrorSyncMode.None, _ => MirrorSyncMode.Full };
            var job = BackupJob.Create(registry, g, source, target, new BackupOptions
            {
                JobId = "b" + seed, Sync = sync, Speed = 6 << 20, Compress = mode == Mode.FullCompressed,
            });
            if (mode == Mode.Incremental)
                source.DirtyBitmaps.Add(new Strata.Images.Bitmaps.DirtyBitmap(DiskSize, 65536, "inc"));
            Assert.Same(job.Filter, disk.Root);
            load.Resume();
            if (mode == Mode.None)
            {
                registry.Start(job);
                await load.WaitWritesAsync(150);
                await load.StopAsync();
                var done = new TaskCompletionSource();
                registry.Events.Raised += e => { if (e is JobStatusChanged { Status: JobStatus.Null }) done.TrySetResult(); };
                using (await registry.MainLoop.EnterAsync())
                    job.UserCancel();
                await done.Task.WaitAsync(TimeSpan.FromSeconds(30));
                using (await registry.MainLoop.EnterAsync())
                {
                }
            }
            else
            {
                await RunToEndAsync(registry, job);
            }
            Assert.Same(source, disk.Root);
            Assert.DoesNotContain(g.Nodes, n => n.Driver == "copy-before-write");

            if (mode == Mode.Incremental)
            {
                QemuTools.QemuImg("create", "-q", "-f", "qcow2", "-b", tgt, "-F", "qcow2", inc).EnsureSuccess();
                var incNode = await g.AddAsync(Qcow2("inc", inc, noBacking: true));
                await load.WaitWritesAsync(40);
                await load.PauseAsync();
                atIncremental = (byte[])model.Bytes.Clone();
                var bitmap = source.DirtyBitmaps.Find("inc")!;
                Assert.True(bitmap.DirtyGranules > 0);
                var job2 = BackupJob.Create(registry, g, source, incNode, new BackupOptions
                {
                    JobId = "i" + seed, Sync = MirrorSyncMode.Incremental, Bitmap = "inc", Speed = 6 << 20,
                });
                lock (model.Written)
                    model.Written.Clear();
                load.Resume();
                await RunToEndAsync(registry, job2);
                await load.StopAsync();
                // on-success: the bitmap now holds what was written during the job, and only that.
                var after = source.DirtyBitmaps.Find("inc")!;
                Assert.False(after.Busy);
                foreach (long c in model.Written)
                    Assert.True(after.Get(c * 65536), $"cluster {c} written during the job is not dirty");
                Assert.Single(source.DirtyBitmaps.All);
            }
            else
                await load.StopAsync();
            disk.Release();
        }

        AssertSame(tgt, atStart, dir.Path, "target");
        if (mode == Mode.Incremental)
            AssertSame(inc, atIncremental, dir.Path, "incremental");
        if (mode == Mode.Top)
            QemuTools.QemuImg("check", "-q", base0).EnsureSuccess();
        AssertSame(src, model.Bytes, dir.Path, "source");
    }
}
