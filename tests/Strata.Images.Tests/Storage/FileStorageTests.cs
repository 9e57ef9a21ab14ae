using Strata.Images.Storage;
using Xunit;

namespace Strata.Images.Tests.Storage;

public sealed class FileStorageTests : IDisposable
{
    private const int KiB = 1024;
    private const int MiB = 1024 * 1024;

    private readonly TempDir _dir = new("storage");

    public void Dispose() => _dir.Dispose();

    private string NewPath(string name = "f.img") => _dir.Combine(name);

    private static byte[] RandomBytes(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    private static byte[] Filled(int length, byte value)
    {
        var bytes = new byte[length];
        bytes.AsSpan().Fill(value);
        return bytes;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task WriteMany_WritesInListOrder_GrowsTheFile_AndTheNextFlushCoversIt(bool direct)
    {
        string path = NewPath();
        await using var storage = FileStorage.Create(path, new FileStorageOptions(Direct: direct));
        await storage.WriteAsync(Filled(8 * KiB, 1), 0);
        await storage.FlushAsync();
        long flushes = storage.FdatasyncCount;
        // Unaligned pieces, one past the end, and an overlap: the later piece wins.
        await storage.WriteManyAsync([(Filled(4 * KiB, 2), 4 * KiB), (Filled(100, 3), 20_000), (Filled(10, 4), 4 * KiB + 5)]);
        Assert.Equal(20_100, storage.Length);
        var back = new byte[20_100];
        await storage.ReadAsync(back, 0);
        var expect = new byte[20_100];
        expect.AsSpan(0, 4 * KiB).Fill(1);
        expect.AsSpan(4 * KiB, 4 * KiB).Fill(2);
        expect.AsSpan(4 * KiB + 5, 10).Fill(4);
        expect.AsSpan(20_000, 100).Fill(3);
        Assert.Equal(expect, back);
        await storage.FlushAsync();
        Assert.Equal(flushes + 1, storage.FdatasyncCount);
        Assert.Equal(20_100, new FileInfo(path).Length);
    }

    [Fact]
    public async Task WriteThenReadRoundTripsAndSurvivesReopen()
    {
        string path = NewPath();
        byte[] data = RandomBytes(100_000, 1);
        await using (var storage = FileStorage.Create(path, FileStorageOptions.Default))
        {
            Assert.Equal(0, storage.Length);
            Assert.Equal(1, storage.RequestAlignment);
            Assert.False(storage.IsReadOnly);
            Assert.Equal(path, storage.Name);

            await storage.WriteAsync(data, 12_345);
            Assert.Equal(12_345 + data.Length, storage.Length);

            var back = new byte[data.Length];
            await storage.ReadAsync(back, 12_345);
            Assert.Equal(data, back);
            await storage.FlushAsync();
        }

        Assert.Equal(12_345 + data.Length, new FileInfo(path).Length);
        await using (var storage = FileStorage.Open(path, new FileStorageOptions(ReadOnly: true)))
        {
            Assert.Equal(12_345 + data.Length, storage.Length);
            var back = new byte[data.Length + 12_345];
            await storage.ReadAsync(back, 0);
            Assert.All(back[..12_345], b => Assert.Equal(0, b));
            Assert.Equal(data, back[12_345..]);
        }
    }

    [Fact]
    public async Task ReadsPastEofAreZeroFilled()
    {
        await using var storage = FileStorage.Create(NewPath(), FileStorageOptions.Default);
        await storage.WriteAsync(Filled(1000, 0xAB), 0);

        byte[] straddling = Filled(3000, 0xFF);
        await storage.ReadAsync(straddling, 500);
        Assert.All(straddling[..500], b => Assert.Equal(0xAB, b));
        Assert.All(straddling[500..], b => Assert.Equal(0, b));

        byte[] beyond = Filled(4096, 0xFF);
        await storage.ReadAsync(beyond, 1 * MiB);
        Assert.All(beyond, b => Assert.Equal(0, b));
        Assert.Equal(1000, storage.Length);
    }

    [Fact]
    public async Task CreateTruncatesAnExistingFile()
    {
        string path = NewPath();
        await File.WriteAllBytesAsync(path, Filled(10_000, 1));
        await using var storage = FileStorage.Create(path, FileStorageOptions.Default);
        Assert.Equal(0, storage.Length);
        Assert.Equal(0, new FileInfo(path).Length);
    }

    [Fact]
    public async Task OpenReportsTheFileSize()
    {
        string path = NewPath();
        await File.WriteAllBytesAsync(path, Filled(12_345, 7));
        await using var storage = FileStorage.Open(path, FileStorageOptions.Default);
        Assert.Equal(12_345, storage.Length);
    }

    [Fact]
    public void OpenOfAMissingFileNamesIt()
    {
        string path = NewPath("missing.img");
        var ex = Assert.Throws<FileNotFoundException>(() => FileStorage.Open(path, FileStorageOptions.Default));
        Assert.Contains(path, ex.Message);
        Assert.Contains("No such file or directory", ex.Message);
    }

    [Fact]
    public void OpenOfADirectoryIsRefused()
    {
        var ex = Assert.Throws<IOException>(() => FileStorage.Open(_dir.Path, new FileStorageOptions(ReadOnly: true)));
        Assert.Contains(_dir.Path, ex.Message);
    }

    [Fact]
    public void CreateReadOnlyIsRefused()
        => Assert.Throws<ArgumentException>(() => FileStorage.Create(NewPath(), new FileStorageOptions(ReadOnly: true)));

    [Fact]
    public async Task ReadOnlyStorageReadsAndRefusesChanges()
    {
        string path = NewPath();
        await File.WriteAllBytesAsync(path, Filled(4096, 9));
        await using var storage = FileStorage.Open(path, new FileStorageOptions(ReadOnly: true));
        Assert.True(storage.IsReadOnly);

        var back = new byte[4096];
        await storage.ReadAsync(back, 0);
        Assert.All(back, b => Assert.Equal(9, b));

        await Assert.ThrowsAsync<InvalidOperationException>(async () => await storage.WriteAsync(new byte[1], 0));
        await Assert.ThrowsAsync<InvalidOperationException>(async () => await storage.WriteZeroesAsync(0, 1, mayUnmap: true));
        await Assert.ThrowsAsync<InvalidOperationException>(async () => await storage.DiscardAsync(0, 1));
        await Assert.ThrowsAsync<InvalidOperationException>(async () => await storage.SetLengthAsync(0));
        await storage.FlushAsync();
        Assert.Equal(4096, new FileInfo(path).Length);
    }

    [Fact]
    public async Task WriteZeroesWithUnmapPunchesAHole()
    {
        await using var storage = FileStorage.Create(NewPath(), FileStorageOptions.Default);
        await storage.WriteAsync(RandomBytes(MiB, 2), 0);
        await storage.FlushAsync();
        long allocatedBefore = storage.AllocatedBytes;

        await storage.WriteZeroesAsync(256 * KiB, 512 * KiB, mayUnmap: true);

        Assert.Equal(MiB, storage.Length);
        Assert.Equal(new StorageExtent(true, 256 * KiB), await storage.GetExtentAsync(0, MiB));
        Assert.Equal(new StorageExtent(false, 512 * KiB), await storage.GetExtentAsync(256 * KiB, MiB));
        Assert.Equal(new StorageExtent(true, 256 * KiB), await storage.GetExtentAsync(768 * KiB, MiB));
        Assert.True(storage.AllocatedBytes <= allocatedBefore - 512 * KiB, $"{storage.AllocatedBytes} vs {allocatedBefore}");

        var back = new byte[MiB];
        await storage.ReadAsync(back, 0);
        byte[] expected = RandomBytes(MiB, 2);
        expected.AsSpan(256 * KiB, 512 * KiB).Clear();
        Assert.Equal(expected, back);
    }

    [Fact]
    public async Task WriteZeroesWithoutUnmapKeepsTheRangeAllocated()
    {
        await using var storage = FileStorage.Create(NewPath(), FileStorageOptions.Default);
        await storage.WriteAsync(RandomBytes(MiB, 3), 0);
        await storage.FlushAsync();
        long allocatedBefore = storage.AllocatedBytes;

        // Unaligned on purpose: the partial blocks must be zeroed too.
        await storage.WriteZeroesAsync(100_000, 500_000, mayUnmap: false);

        Assert.Equal(MiB, storage.Length);
        Assert.True(storage.AllocatedBytes >= allocatedBefore, $"{storage.AllocatedBytes} vs {allocatedBefore}");
        var back = new byte[MiB];
        await storage.ReadAsync(back, 0);
        byte[] expected = RandomBytes(MiB, 3);
        expected.AsSpan(100_000, 500_000).Clear();
        Assert.Equal(expected, back);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task WriteZeroesPastEofExtendsTheFile(bool mayUnmap)
    {
        string path = NewPath();
        await using var storage = FileStorage.Create(path, FileStorageOptions.Default);
        await storage.WriteAsync(Filled(4096, 0x5A), 0);

        await storage.WriteZeroesAsync(2048, 10_000, mayUnmap);

        Assert.Equal(12_048, storage.Length);
        Assert.Equal(12_048, new FileInfo(path).Length);
        var back = Filled(12_048, 0xFF);
        await storage.ReadAsync(back, 0);
        Assert.All(back[..2048], b => Assert.Equal(0x5A, b));
        Assert.All(back[2048..], b => Assert.Equal(0, b));
    }

    [Fact]
    public async Task DiscardPunchesAndNeverGrowsTheFile()
    {
        string path = NewPath();
        await using var storage = FileStorage.Create(path, FileStorageOptions.Default);
        await storage.WriteAsync(RandomBytes(MiB, 4), 0);

        await storage.DiscardAsync(512 * KiB, 4 * MiB);

        Assert.Equal(MiB, storage.Length);
        Assert.Equal(MiB, new FileInfo(path).Length);
        Assert.Equal(new StorageExtent(false, 512 * KiB), await storage.GetExtentAsync(512 * KiB, 4 * MiB));
        var back = Filled(512 * KiB, 0xFF);
        await storage.ReadAsync(back, 512 * KiB);
        Assert.All(back, b => Assert.Equal(0, b));

        await storage.DiscardAsync(2 * MiB, 4096); // entirely past EOF: nothing to do
        Assert.Equal(MiB, storage.Length);
    }

    [Fact]
    public async Task ExtentsFollowDataAndHoles()
    {
        await using var storage = FileStorage.Create(NewPath(), FileStorageOptions.Default);
        await storage.SetLengthAsync(2 * MiB);
        await storage.WriteAsync(Filled(64 * KiB, 1), 0);
        await storage.WriteAsync(Filled(64 * KiB, 2), MiB);

        Assert.Equal(new StorageExtent(true, 64 * KiB), await storage.GetExtentAsync(0, 2 * MiB));
        Assert.Equal(new StorageExtent(true, 1000), await storage.GetExtentAsync(0, 1000));
        Assert.Equal(new StorageExtent(true, 32 * KiB), await storage.GetExtentAsync(32 * KiB, 2 * MiB));
        Assert.Equal(new StorageExtent(false, MiB - 64 * KiB), await storage.GetExtentAsync(64 * KiB, 2 * MiB));
        Assert.Equal(new StorageExtent(false, 4096), await storage.GetExtentAsync(64 * KiB, 4096));
        Assert.Equal(new StorageExtent(true, 64 * KiB), await storage.GetExtentAsync(MiB, 2 * MiB));
        // Trailing hole up to EOF, then past EOF the remainder is a hole too.
        Assert.Equal(new StorageExtent(false, MiB - 64 * KiB), await storage.GetExtentAsync(MiB + 64 * KiB, 4 * MiB));
        Assert.Equal(new StorageExtent(false, 4096), await storage.GetExtentAsync(3 * MiB, 4096));
    }

    [Fact]
    public async Task SetLengthGrowsSparseAndShrinks()
    {
        string path = NewPath();
        await using var storage = FileStorage.Create(path, FileStorageOptions.Default);
        await storage.WriteAsync(Filled(8192, 3), 0);

        await storage.SetLengthAsync(16 * MiB);
        Assert.Equal(16 * MiB, storage.Length);
        Assert.Equal(16 * MiB, new FileInfo(path).Length);
        Assert.True(storage.AllocatedBytes < MiB);
        Assert.Equal(new StorageExtent(false, 16 * MiB - 8192), await storage.GetExtentAsync(8192, 16 * MiB));

        await storage.SetLengthAsync(4096, Preallocation.Metadata);
        Assert.Equal(4096, storage.Length);
        Assert.Equal(4096, new FileInfo(path).Length);
        var back = Filled(8192, 0xFF);
        await storage.ReadAsync(back, 0);
        Assert.All(back[..4096], b => Assert.Equal(3, b));
        Assert.All(back[4096..], b => Assert.Equal(0, b));
    }

    [Theory]
    [InlineData(Preallocation.Falloc)]
    [InlineData(Preallocation.Full)]
    public async Task SetLengthWithPreallocationAllocatesTheNewRange(Preallocation prealloc)
    {
        string path = NewPath();
        await using var storage = FileStorage.Create(path, FileStorageOptions.Default);
        await storage.WriteAsync(Filled(1000, 4), 0);

        await storage.SetLengthAsync(8 * MiB + 1000, prealloc);
        await storage.FlushAsync();

        Assert.Equal(8 * MiB + 1000, storage.Length);
        Assert.Equal(8 * MiB + 1000, new FileInfo(path).Length);
        Assert.True(storage.AllocatedBytes >= 8 * MiB, $"allocated {storage.AllocatedBytes}");
        var back = Filled(2 * MiB, 0xFF);
        await storage.ReadAsync(back, 0);
        Assert.All(back[..1000], b => Assert.Equal(4, b));
        Assert.All(back[1000..], b => Assert.Equal(0, b));
    }

    [Fact]
    public async Task NoFlushOptionMakesFlushANoOp()
    {
        await using var storage = FileStorage.Create(NewPath(), new FileStorageOptions(NoFlush: true));
        await storage.WriteAsync(new byte[10], 0);
        Assert.True(NullStorageTests.CompletedAtOnce(storage.FlushAsync()));
    }

    [Fact]
    public async Task ConcurrentWritesToDistinctRangesAllLand()
    {
        const int Writers = 32;
        const int Piece = 10_000; // unaligned, so pieces share file system blocks
        await using var storage = FileStorage.Create(NewPath(), FileStorageOptions.Default);
        await Task.WhenAll(Enumerable.Range(0, Writers).Select(i =>
            Task.Run(async () => await storage.WriteAsync(Filled(Piece, (byte)(i + 1)), (long)i * Piece))));

        Assert.Equal(Writers * Piece, storage.Length);
        var back = new byte[Writers * Piece];
        await storage.ReadAsync(back, 0);
        for (int i = 0; i < Writers; i++)
            Assert.All(back.AsSpan(i * Piece, Piece).ToArray(), b => Assert.Equal((byte)(i + 1), b));
    }

    [Fact]
    public async Task WriteErrorsNameTheFileAndTheReason()
    {
        // Every write to /dev/full fails with ENOSPC.
        if (!File.Exists("/dev/full"))
            return;
        await using var storage = FileStorage.Open("/dev/full", FileStorageOptions.Default);
        var ex = await Assert.ThrowsAsync<IOException>(async () => await storage.WriteAsync(new byte[10], 0));
        Assert.Equal("Could not write '/dev/full': No space left on device", ex.Message);
    }

    [Fact]
    public async Task OperationsAfterDisposeThrow()
    {
        var storage = FileStorage.Create(NewPath(), FileStorageOptions.Default);
        await storage.DisposeAsync();
        await storage.DisposeAsync(); // idempotent
        await Assert.ThrowsAsync<ObjectDisposedException>(async () => await storage.ReadAsync(new byte[1], 0));
    }

    [Fact]
    public async Task NegativeOffsetsAreRejected()
    {
        await using var storage = FileStorage.Create(NewPath(), FileStorageOptions.Default);
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(async () => await storage.ReadAsync(new byte[1], -1));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(async () => await storage.WriteAsync(new byte[1], -1));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(async () => await storage.WriteZeroesAsync(0, -1, false));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(async () => await storage.GetExtentAsync(-1, 1));
    }

    [Fact]
    public async Task Flush_CallsFdatasyncOnlyWhenSomethingChangedSinceTheLastOne()
    {
        await using var storage = FileStorage.Create(NewPath(), FileStorageOptions.Default);
        await storage.FlushAsync();
        Assert.Equal(0, storage.FdatasyncCount); // a new empty file: nothing to make durable

        // Every kind of change makes the next flush real, and only the next one.
        Func<Task>[] changes =
        [
            () => storage.WriteAsync(Filled(8 * KiB, 7), 4 * KiB).AsTask(),
            () => storage.WriteZeroesAsync(0, 4 * KiB, mayUnmap: false).AsTask(),
            () => storage.WriteZeroesAsync(4 * KiB, 4 * KiB, mayUnmap: true).AsTask(),
            () => storage.DiscardAsync(8 * KiB, 4 * KiB).AsTask(),
            () => storage.SetLengthAsync(1 * MiB).AsTask(),
        ];
        long expected = 0;
        foreach (var change in changes)
        {
            await change();
            await storage.FlushAsync();
            Assert.Equal(++expected, storage.FdatasyncCount);
            await storage.FlushAsync();
            Assert.Equal(expected, storage.FdatasyncCount);
        }
    }
}
