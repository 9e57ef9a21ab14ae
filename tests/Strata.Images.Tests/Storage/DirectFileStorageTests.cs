using Strata.Images.Storage;
using Xunit;

namespace Strata.Images.Tests.Storage;

/// <summary>O_DIRECT (cache.direct=on). <see cref="TempDir"/> lives on a disk file system, not tmpfs.</summary>
public sealed class DirectFileStorageTests : IDisposable
{
    private const int KiB = 1024;
    private const int MiB = 1024 * 1024;

    private static readonly FileStorageOptions Direct = new(Direct: true);

    private readonly TempDir _dir = new("direct");

    public void Dispose() => _dir.Dispose();

    private string NewPath(string name = "d.img") => _dir.Combine(name);

    private static byte[] RandomBytes(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    [Fact]
    public async Task AlignmentIsAPowerOfTwoBlockSize()
    {
        await using var storage = FileStorage.Create(NewPath(), Direct);
        int alignment = storage.RequestAlignment;
        Assert.True(alignment >= 512 && (alignment & (alignment - 1)) == 0, $"alignment {alignment}");
    }

    [Fact]
    public async Task AlignedRequestsWithAlignedBuffersRoundTrip()
    {
        await using var storage = FileStorage.Create(NewPath(), Direct);
        using var buffer = new AlignedBuffer(64 * KiB, 4096);
        RandomBytes(64 * KiB, 1).CopyTo(buffer.GetSpan());

        await storage.WriteAsync(buffer.Memory, 128 * KiB);
        Assert.Equal(192 * KiB, storage.Length);

        using var back = new AlignedBuffer(64 * KiB, 4096);
        await storage.ReadAsync(back.Memory, 128 * KiB);
        Assert.Equal(RandomBytes(64 * KiB, 1), back.GetSpan().ToArray());
    }

    [Fact]
    public async Task AlignedOffsetsWithAnUnalignedBufferRoundTrip()
    {
        await using var storage = FileStorage.Create(NewPath(), Direct);
        byte[] source = RandomBytes(8192 + 3, 2);
        await storage.WriteAsync(source.AsMemory(3), 4096); // the array's address + 3 is never 512-aligned
        var back = new byte[8192 + 1];
        await storage.ReadAsync(back.AsMemory(1), 4096);
        Assert.Equal(source[3..], back[1..]);
    }

    [Fact]
    public async Task UnalignedRequestsMatchAModel()
    {
        string path = NewPath();
        var model = new byte[4 * MiB];
        var random = new Random(42);
        await using (var storage = FileStorage.Create(path, Direct))
        {
            long modelLength = 0;
            for (int i = 0; i < 200; i++)
            {
                int offset = random.Next(0, 2 * MiB);
                int length = random.Next(1, i % 10 == 0 ? 1500 * KiB : 20_000);
                byte[] data = new byte[length];
                random.NextBytes(data);
                await storage.WriteAsync(data, offset);
                data.CopyTo(model, offset);
                modelLength = Math.Max(modelLength, offset + length);
                Assert.Equal(modelLength, storage.Length);

                int readOffset = random.Next(0, 4 * MiB - 70_000);
                int readLength = random.Next(1, 70_000);
                var back = new byte[readLength];
                await storage.ReadAsync(back, readOffset);
                Assert.True(model.AsSpan(readOffset, readLength).SequenceEqual(back), $"read {readOffset}+{readLength} after write {i}");
            }

            // Padding of the last block must not show up in the file size.
            Assert.Equal(modelLength, new FileInfo(path).Length);
        }

        byte[] onDisk = await File.ReadAllBytesAsync(path);
        Assert.True(model.AsSpan(0, onDisk.Length).SequenceEqual(onDisk));
    }

    [Fact]
    public async Task ReadsPastAnUnalignedEofAreZeroFilled()
    {
        string path = NewPath();
        byte[] content = RandomBytes(5000, 3);
        await File.WriteAllBytesAsync(path, content);
        await using var storage = FileStorage.Open(path, Direct);
        Assert.Equal(5000, storage.Length);

        var back = new byte[10_000];
        back.AsSpan().Fill(0xFF);
        await storage.ReadAsync(back, 0);
        Assert.Equal(content, back[..5000]);
        Assert.All(back[5000..], b => Assert.Equal(0, b));

        using var aligned = new AlignedBuffer(8192, 4096);
        aligned.GetSpan().Fill(0xFF);
        await storage.ReadAsync(aligned.Memory, 4096);
        Assert.Equal(content[4096..], aligned.GetSpan()[..904].ToArray());
        Assert.All(aligned.GetSpan()[904..].ToArray(), b => Assert.Equal(0, b));
    }

    [Fact]
    public async Task ConcurrentUnalignedWritesToOneBlockLoseNothing()
    {
        // Every writer patches its own few bytes of the same alignment block (which lies within one
        // 4 KiB block), so each write is a read-modify-write of that block racing all the others.
        const int Writers = 32;
        await using var storage = FileStorage.Create(NewPath(), Direct);
        int block = storage.RequestAlignment;
        int piece = block / Writers;
        await storage.WriteAsync(new byte[3 * block], 0);

        for (int round = 0; round < 50; round++)
        {
            int r = round;
            // Dedicated threads released together, so the writes really overlap even on two cores.
            using var start = new Barrier(Writers);
            await Task.WhenAll(Enumerable.Range(0, Writers).Select(i => Task.Factory.StartNew(() =>
            {
                var data = new byte[piece];
                data.AsSpan().Fill((byte)(i + r + 1));
                start.SignalAndWait();
                storage.WriteAsync(data, block + (long)i * piece).AsTask().GetAwaiter().GetResult();
            }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default)));

            var back = new byte[block];
            await storage.ReadAsync(back, block);
            for (int i = 0; i < Writers; i++)
            {
                for (int j = 0; j < piece; j++)
                    Assert.True(back[i * piece + j] == (byte)(i + r + 1), $"round {r}: byte {i * piece + j} is {back[i * piece + j]}");
            }
        }
    }

    [Fact]
    public async Task ConcurrentUnalignedAppendsKeepEveryByteAndTheExactSize()
    {
        const int Writers = 48;
        const int Piece = 1000;
        string path = NewPath();
        await using (var storage = FileStorage.Create(path, Direct))
        {
            await Task.WhenAll(Enumerable.Range(0, Writers).Select(i => Task.Run(async () =>
            {
                var piece = new byte[Piece];
                piece.AsSpan().Fill((byte)(i + 1));
                await storage.WriteAsync(piece, (long)i * Piece);
            })));
            Assert.Equal(Writers * Piece, storage.Length);
        }

        byte[] onDisk = await File.ReadAllBytesAsync(path);
        Assert.Equal(Writers * Piece, onDisk.Length);
        for (int i = 0; i < Writers; i++)
            Assert.All(onDisk.AsSpan(i * Piece, Piece).ToArray(), b => Assert.Equal((byte)(i + 1), b));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task WriteZeroesWorksUnaligned(bool mayUnmap)
    {
        await using var storage = FileStorage.Create(NewPath(), Direct);
        byte[] data = RandomBytes(MiB, 5);
        await storage.WriteAsync(data, 0);

        await storage.WriteZeroesAsync(1000, 300_000, mayUnmap);
        await storage.WriteZeroesAsync(MiB - 10, 5000, mayUnmap); // straddles EOF

        Assert.Equal(MiB + 4990, storage.Length);
        var back = new byte[MiB + 4990];
        await storage.ReadAsync(back, 0);
        data.AsSpan(1000, 300_000).Clear();
        data.AsSpan(MiB - 10).Clear();
        Assert.True(data.AsSpan().SequenceEqual(back.AsSpan(0, MiB)));
        Assert.All(back[MiB..], b => Assert.Equal(0, b));
    }

    [Theory]
    [InlineData(Preallocation.Off)]
    [InlineData(Preallocation.Falloc)]
    [InlineData(Preallocation.Full)]
    public async Task SetLengthToAnUnalignedSize(Preallocation prealloc)
    {
        string path = NewPath();
        await using var storage = FileStorage.Create(path, Direct);
        await storage.WriteAsync(RandomBytes(777, 6), 0);
        await storage.SetLengthAsync(3 * MiB + 123, prealloc);

        Assert.Equal(3 * MiB + 123, storage.Length);
        Assert.Equal(3 * MiB + 123, new FileInfo(path).Length);
        if (prealloc != Preallocation.Off)
            Assert.True(storage.AllocatedBytes >= 3 * MiB, $"allocated {storage.AllocatedBytes}");
        var back = new byte[3 * MiB + 123];
        await storage.ReadAsync(back, 0);
        Assert.Equal(RandomBytes(777, 6), back[..777]);
        Assert.All(back[777..], b => Assert.Equal(0, b));
    }

    [Fact]
    public async Task WrittenDataIsVisibleToABufferedReader()
    {
        string path = NewPath();
        byte[] data = RandomBytes(10_001, 7);
        await using (var storage = FileStorage.Create(path, Direct))
        {
            await storage.WriteAsync(data, 333);
            await storage.FlushAsync();
        }
        await using var buffered = FileStorage.Open(path, new FileStorageOptions(ReadOnly: true));
        Assert.Equal(10_334, buffered.Length);
        var back = new byte[10_001];
        await buffered.ReadAsync(back, 333);
        Assert.Equal(data, back);
    }

    [Fact]
    public async Task ReadOnlyDirectStorageReadsUnaligned()
    {
        string path = NewPath();
        byte[] content = RandomBytes(20_000, 8);
        await File.WriteAllBytesAsync(path, content);
        await using var storage = FileStorage.Open(path, new FileStorageOptions(ReadOnly: true, Direct: true));
        Assert.True(storage.IsReadOnly);
        var back = new byte[12_345];
        await storage.ReadAsync(back, 777);
        Assert.Equal(content.AsSpan(777, 12_345).ToArray(), back);
        await Assert.ThrowsAsync<InvalidOperationException>(async () => await storage.WriteAsync(back, 0));
    }

    [Fact]
    public async Task TmpfsEitherTakesODirectOrSaysItCannot()
    {
        // Linux 6.6+ tmpfs accepts O_DIRECT; older kernels refuse it with EINVAL.
        if (!Directory.Exists("/dev/shm"))
            return;
        string path = Path.Combine("/dev/shm", $"strata-direct-{Environment.ProcessId}-{Guid.NewGuid():N}");
        try
        {
            await using var storage = FileStorage.Create(path, Direct);
            await storage.WriteAsync(new byte[] { 1, 2, 3 }, 10);
            var back = new byte[3];
            await storage.ReadAsync(back, 10);
            Assert.Equal(new byte[] { 1, 2, 3 }, back);
        }
        catch (IOException ex)
        {
            Assert.Contains("O_DIRECT", ex.Message);
            Assert.Contains(path, ex.Message);
        }
        finally
        {
            File.Delete(path);
        }
    }
}
