using System.Globalization;
using Strata.Images.Qcow2;
using Strata.Images.Storage;

/// <summary>
/// strata-crash-writer snapshot &lt;create|delete|apply&gt; &lt;image&gt; &lt;size&gt; &lt;qcow2 options|-&gt; &lt;seed&gt;
///
/// Creates the image and repeats, until killed: a write of one byte value over a random range, a flush, then the
/// snapshot operation of the mode (delete and apply first create snapshots when there are fewer than two; create
/// deletes the oldest when there are six). Protocol on stdout, one line each, each printed before the step starts
/// unless said otherwise:
///   READY                      the image exists and is open
///   W &lt;off&gt; &lt;len&gt; &lt;value&gt;     a write of <c>value</c> bytes
///   F                          (after) the write is durable
///   B &lt;op&gt; &lt;id&gt; &lt;name&gt;       a snapshot create / delete / apply begins (create: the ID it will get)
///   E                          (after) the snapshot operation returned
/// </summary>
internal static class SnapshotMode
{
    public static async Task<int> RunAsync(string[] args)
    {
        string mode = args[0], path = args[1];
        long size = long.Parse(args[2], CultureInfo.InvariantCulture);
        var options = CrashWriterOptions.Parse(args[3]) with { Size = size };
        var r = new Random(int.Parse(args[4], CultureInfo.InvariantCulture));
        var stdout = Console.Out;
        void Print(string line)
        {
            stdout.Write(line + "\n");
            stdout.Flush();
        }

        await using (await Qcow2Creator.CreateAsync(FileStorage.Create(path, FileStorageOptions.Default), options))
        {
        }
        await using var img = await Qcow2Image.OpenAsync(FileStorage.Open(path, FileStorageOptions.Default));
        Print("READY");
        for (int i = 1; ; i++)
        {
            long off = r.NextInt64(size / 512) * 512;
            long len = Math.Min(size - off, r.Next(1, 256) * 512L);
            byte value = (byte)(i % 255 + 1);
            Print($"W {off} {len} {value}");
            var data = new byte[len];
            Array.Fill(data, value);
            await img.WriteAsync(data, off);
            await img.FlushAsync();
            Print("F");

            var list = await img.GetSnapshotsAsync();
            if (mode == "create" && list.Count >= 6)
            {
                Print($"B delete {list[0].Id} {list[0].Name}");
                await img.DeleteSnapshotAsync(list[0].Id, null);
                Print("E");
            }
            else if (mode != "create" && list.Count < 2)
            {
                await CreateAsync(img, list, $"s{i}", Print);
                continue;
            }
            list = await img.GetSnapshotsAsync();
            switch (mode)
            {
                case "create":
                    await CreateAsync(img, list, $"s{i}", Print);
                    break;
                case "delete":
                    {
                        var sn = list[r.Next(list.Count)];
                        Print($"B delete {sn.Id} {sn.Name}");
                        await img.DeleteSnapshotAsync(sn.Id, null);
                        Print("E");
                        break;
                    }
                default:
                    {
                        var sn = list[r.Next(list.Count)];
                        Print($"B apply {sn.Id} {sn.Name}");
                        await img.ApplySnapshotAsync(sn.Id);
                        Print("E");
                        break;
                    }
            }
        }
    }

    private static async Task CreateAsync(Qcow2Image img, IReadOnlyList<Qcow2Snapshot> list, string name, Action<string> print)
    {
        print($"B create {Qcow2ImageIds.Next(list)} {name}");
        await img.CreateSnapshotAsync(new Qcow2SnapshotCreateInfo { Name = name });
        print("E");
    }
}

/// <summary>The ID QEMU's rule gives the next snapshot (highest numeric ID + 1).</summary>
internal static class Qcow2ImageIds
{
    public static string Next(IReadOnlyList<Qcow2Snapshot> list)
    {
        ulong max = 0;
        foreach (var sn in list)
            if (ulong.TryParse(sn.Id, NumberStyles.None, CultureInfo.InvariantCulture, out ulong v))
                max = Math.Max(max, v);
        return (max + 1).ToString(CultureInfo.InvariantCulture);
    }
}
