using System.Globalization;
using Strata.Images.Format;
using Strata.Images.Qcow2;
using Strata.Images.Storage;

// strata-crash-writer <image> <size> <qcow2 options, e.g. cluster_size=4096,lazy_refcounts=on, or "-"> <seed> [<backing> <backing format>]
//
// Creates the qcow2 image, opens it through ImageOpener and then writes, zeroes and discards at random until it is
// killed: up to four ops in flight at once (never overlapping each other), with flushes running concurrently with
// them, and now and then a close and reopen. Protocol on stdout, one line each:
//   READY                       the image exists and is open
//   O <id> W <off> <len> <pat>  (printed before the op is issued) write of <len> bytes of <pat> (decimal) at <off>
//   O <id> Z <off> <len> <u>    write-zeroes, <u> = 1 with MayUnmap
//   O <id> D <off> <len> 0      discard
//   F <id>                      (printed after a flush or close returned) every op up to <id> had completed before
//                               the flush started, so all of them are durable
if (args.Length > 0 && args[0] == "snapshot")
    return await SnapshotMode.RunAsync(args[1..]);
if (args.Length is not (4 or 6))
{
    Console.Error.WriteLine("usage: strata-crash-writer <image> <size> <options|-> <seed> [<backing> <backing-format>]");
    return 2;
}

string path = args[0];
long size = long.Parse(args[1], CultureInfo.InvariantCulture);
var options = CrashWriterOptions.Parse(args[2]) with
{
    Size = size,
    BackingFile = args.Length == 6 ? args[4] : null,
    BackingFormat = args.Length == 6 ? args[5] : null,
};
var r = new Random(int.Parse(args[3], CultureInfo.InvariantCulture));
var stdout = Console.Out;
var printLock = new object();
void Print(string line)
{
    lock (printLock)
    {
        stdout.Write(line + "\n");
        stdout.Flush();
    }
}

await using (await Qcow2Creator.CreateAsync(FileStorage.Create(path, FileStorageOptions.Default), options))
{
}
var openOptions = new ImageOpenOptions { Format = "qcow2" };
IImage img = await ImageOpener.OpenAsync(path, openOptions);
Print("READY");

const int MaxInFlight = 4;
int cs = options.ClusterSize;
long lastId = 0;
var gate = new object();
var pending = new SortedDictionary<long, (long Start, long End)>(); // issued, not completed
var slots = new SemaphoreSlim(MaxInFlight, MaxInFlight);
var running = new List<Task>();
Task? flush = null;

// The highest id up to which every op has completed.
long CompletedPrefix()
{
    lock (gate)
        return pending.Count == 0 ? lastId : pending.Keys.First() - 1;
}

for (int n = 0; n < 10_000_000; n++)
{
    await slots.WaitAsync();
    long off = 0, len = 0;
    bool ok = false;
    for (int attempt = 0; attempt < 16 && !ok; attempt++)
    {
        off = r.Next(4) switch
        {
            0 => r.NextInt64(size / cs) * cs,
            1 => r.NextInt64(size / 512) * 512,
            2 => Math.Clamp(r.NextInt64(size / cs) * cs + r.Next(-700, 700), 0, size - 1),
            _ => r.NextInt64(size),
        };
        len = r.Next(3) switch
        {
            0 => r.Next(1, 8193),
            1 => (long)cs * r.Next(1, 4),
            _ => r.Next(1, 256 * 1024 + 1),
        };
        len = Math.Min(len, size - off);
        long s = off, e = off + len;
        lock (gate)
            ok = pending.Values.All(t => e <= t.Start || s >= t.End);
    }
    if (!ok)
    {
        slots.Release();
        await Task.Delay(1);
        continue;
    }

    long id;
    int k = r.Next(100);
    bool unmap = r.Next(2) == 0;
    lock (gate)
    {
        id = ++lastId;
        pending.Add(id, (off, off + len));
    }
    int pattern = (int)(1 + id % 255);
    long o = off, l = len;
    Func<Task> work;
    if (k < 65)
    {
        Print($"O {id} W {off} {len} {pattern}");
        work = async () =>
        {
            var data = new byte[l];
            Array.Fill(data, (byte)pattern);
            await img.WriteAsync(data, o);
        };
    }
    else if (k < 85)
    {
        Print($"O {id} Z {off} {len} {(unmap ? 1 : 0)}");
        work = async () => await img.WriteZeroesAsync(o, l, unmap ? ZeroFlags.MayUnmap : ZeroFlags.None);
    }
    else
    {
        Print($"O {id} D {off} {len} 0");
        work = async () => await img.DiscardAsync(o, l);
    }
    running.Add(Task.Run(async () =>
    {
        try
        {
            await work();
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"op {id} failed: {e}");
            Environment.Exit(3);
        }
        lock (gate)
            pending.Remove(id);
        slots.Release();
    }));
    running.RemoveAll(t => t.IsCompleted);

    int f = r.Next(120);
    if (f == 0)
    {
        // Quiesce, close (which flushes; with lazy refcounts it writes the refcounts and clears the dirty bit), reopen.
        await Task.WhenAll(running);
        if (flush != null)
            await flush;
        long done = CompletedPrefix();
        await img.DisposeAsync();
        Print($"F {done}");
        img = await ImageOpener.OpenAsync(path, openOptions);
    }
    else if (f < 30 && (flush == null || flush.IsCompleted))
    {
        // A flush concurrent with the ops in flight: it covers those that had completed when it started.
        if (flush != null)
            await flush;
        long done = CompletedPrefix();
        var image = img;
        flush = Task.Run(async () =>
        {
            try
            {
                await image.FlushAsync();
            }
            catch (Exception e)
            {
                Console.Error.WriteLine($"flush failed: {e}");
                Environment.Exit(3);
            }
            Print($"F {done}");
        });
    }
}
await Task.WhenAll(running);
if (flush != null)
    await flush;
await img.DisposeAsync();
return 0;
