using System.Diagnostics;
using System.Globalization;
using Strata.Images;
using Strata.Images.Format;
using Strata.Img.Cli;

namespace Strata.Img.Commands;

/// <summary>
/// qemu-img bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-n] [--no-drain] [-o offset]
/// [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename
/// </summary>
public static class BenchCommand
{
    private const int OptFlushInterval = 256, OptImageOpts = 257, OptPattern = 258, OptNoDrain = 259;

    private static readonly LongOption[] Longs =
    [
        new("help", ArgKind.None, 'h'),
        new("flush-interval", ArgKind.Required, OptFlushInterval),
        new("image-opts", ArgKind.None, OptImageOpts),
        new("pattern", ArgKind.Required, OptPattern),
        new("no-drain", ArgKind.None, OptNoDrain),
        new("force-share", ArgKind.None, 'U'),
    ];

    public static async Task<int> RunAsync(string[] args)
    {
        string? fmt = null;
        bool forceShare = false;
        bool isWrite = false, drainOnFlush = true, direct = false, noFlush = false, writethrough = false;
        long count = 75000, depth = 64, offset = 0, bufsize = 4096, step = 0, flushInterval = 0;
        byte pattern = 0;
        var (opts, pos) = GetOpt.Parse(args, ":hc:d:f:ni:o:qs:S:t:wU", Longs);
        foreach (var o in opts)
        {
            switch (o.Id)
            {
                case 'h': return Help.Show();
                case 'c':
                    if (!QemuOpts.TryParseU64(o.Value!, out ulong c) || c > int.MaxValue)
                        throw Io.Fail("Invalid request count specified");
                    count = (long)c;
                    break;
                case 'd':
                    if (!QemuOpts.TryParseU64(o.Value!, out ulong d) || d > int.MaxValue)
                        throw Io.Fail("Invalid queue depth specified");
                    depth = (long)d;
                    break;
                case 'f': fmt = o.Value; break;
                case 'n': break;
                case 'i':
                    if (o.Value is not ("threads" or "native" or "io_uring"))
                        throw Io.Fail($"Invalid aio option: {o.Value}");
                    break;
                case 'o': offset = Sizes.CvtNum("offset", o.Value!); break;
                case 'q': break;
                case 's': bufsize = Sizes.CvtNum("buffer size", o.Value!, 0, int.MaxValue); break;
                case 'S': step = Sizes.CvtNum("step_size", o.Value!, 0, int.MaxValue); break;
                case 't':
                    (direct, noFlush, writethrough) = ChainCli.ParseCacheMode(o.Value!) ?? throw Io.Fail("Invalid cache mode");
                    break;
                case 'w': isWrite = true; break;
                case 'U': forceShare = true; break;
                case OptPattern:
                    if (!QemuOpts.TryParseU64(o.Value!, out ulong p) || p > 0xff)
                        throw Io.Fail("Invalid pattern byte specified");
                    pattern = (byte)p;
                    break;
                case OptFlushInterval:
                    if (!QemuOpts.TryParseU64(o.Value!, out ulong fi) || fi > int.MaxValue)
                        throw Io.Fail("Invalid flush interval specified");
                    flushInterval = (long)fi;
                    break;
                case OptNoDrain: drainOnFlush = false; break;
                case OptImageOpts: throw Io.Fail("--image-opts is not supported");
            }
        }
        if (pos.Count != 1)
            throw Io.ErrorExit("Expecting one image file name");
        string filename = pos[0];
        if (!isWrite && flushInterval != 0)
            throw Io.Fail("--flush-interval is only available in write tests");
        if (flushInterval != 0 && flushInterval < depth)
            throw Io.Fail("Flush interval can't be smaller than depth");

        await using var img = await ImageOpen.OpenAsync(filename, fmt, writable: isWrite, direct: direct, noFlush: noFlush, forceShare: forceShare);
        long imageSize = ImageIo.VirtualSize(img);
        if (step == 0)
            step = bufsize;
        var inv = CultureInfo.InvariantCulture;
        Io.Out.Write(string.Create(inv, $"Sending {count} {(isWrite ? "write" : "read")} requests, {bufsize} bytes each, {depth} in parallel (starting at offset {offset}, step size {step})\n"));
        if (flushInterval != 0)
            Io.Out.Write(string.Create(inv, $"Sending flush every {flushInterval} requests\n"));
        Io.Flush();

        var buffers = new byte[Math.Max(1, depth)][];
        for (int i = 0; i < buffers.Length; i++)
        {
            buffers[i] = GC.AllocateUninitializedArray<byte>((int)bufsize, pinned: true);
            Array.Fill(buffers[i], pattern);
        }

        long next = offset;           // next request's offset
        long issued = 0, completed = 0;
        var gate = new Lock();
        var sw = Stopwatch.StartNew();
        try
        {
            if (count > 0 && depth > 0)
            {
                if (flushInterval != 0 && drainOnFlush)
                {
                    // Batches of flush_interval requests, drained, then a flush.
                    while (issued < count)
                    {
                        long batch = Math.Min(flushInterval, count - issued);
                        long target = issued + batch;
                        await RunRequestsAsync(target);
                        if ((count - completed) % flushInterval == 0)
                            await img.FlushAsync();
                    }
                }
                else
                    await RunRequestsAsync(count);
            }
        }
        catch (Exception e) when (e is ImageException or IOException or ArgumentOutOfRangeException)
        {
            Io.Error($"Failed request: {(e is ArgumentOutOfRangeException ? "Input/output error" : e.Message)}");
            return 1;
        }
        sw.Stop();
        Io.Out.Write(string.Create(inv, $"Run completed in {sw.Elapsed.TotalSeconds:0.000} seconds.\n"));
        return 0;

        async Task RunRequestsAsync(long upTo)
        {
            var workers = new List<Task>();
            for (int w = 0; w < Math.Min(depth, upTo - issued); w++)
            {
                var buf = buffers[w];
                workers.Add(Task.Run(async () =>
                {
                    while (true)
                    {
                        long off;
                        lock (gate)
                        {
                            if (issued >= upTo)
                                return;
                            issued++;
                            off = next;
                            next = (next + step) % imageSize;
                        }
                        if (off + bufsize > imageSize)
                            throw new ArgumentOutOfRangeException(nameof(args));
                        if (isWrite)
                            await img.WriteAsync(buf, off, writethrough ? WriteFlags.Fua : WriteFlags.None);
                        else
                            await img.ReadAsync(buf, off);
                        long done;
                        lock (gate)
                            done = ++completed;
                        if (flushInterval != 0 && !drainOnFlush && (count - done) % flushInterval == 0)
                            await img.FlushAsync();
                    }
                }));
            }
            await Task.WhenAll(workers);
        }
    }
}
