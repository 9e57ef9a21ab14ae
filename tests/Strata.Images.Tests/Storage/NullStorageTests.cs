using Strata.Images.Storage;
using Xunit;

namespace Strata.Images.Tests.Storage;

public sealed class NullStorageTests
{
    [Fact]
    public async Task ReadsZeroesAndDropsWrites()
    {
        await using var storage = new NullStorage(1 << 20);
        Assert.Equal(1 << 20, storage.Length);
        Assert.Equal(1, storage.RequestAlignment);
        Assert.False(storage.IsReadOnly);
        Assert.Equal(0, storage.AllocatedBytes);

        await storage.WriteAsync(new byte[] { 1, 2, 3 }, 0);
        await storage.WriteAsync(new byte[100], 2 << 20); // past the end: dropped, length unchanged
        Assert.Equal(1 << 20, storage.Length);

        var back = new byte[16];
        back.AsSpan().Fill(0xFF);
        await storage.ReadAsync(back, 0);
        Assert.All(back, b => Assert.Equal(0, b));
    }

    [Fact]
    public async Task WithoutReadZeroesBuffersAreLeftAlone()
    {
        await using var storage = new NullStorage(4096, readZeroes: false);
        var back = new byte[16];
        back.AsSpan().Fill(0xFF);
        await storage.ReadAsync(back, 0);
        Assert.All(back, b => Assert.Equal(0xFF, b));
        Assert.Equal(new StorageExtent(true, 4096), await storage.GetExtentAsync(0, 1 << 20));
    }

    [Fact]
    public async Task EverythingCompletesSynchronously()
    {
        await using var storage = new NullStorage(1 << 30);
        Assert.True(CompletedAtOnce(storage.ReadAsync(new byte[4096], 0)));
        Assert.True(CompletedAtOnce(storage.WriteAsync(new byte[4096], 0)));
        Assert.True(CompletedAtOnce(storage.WriteZeroesAsync(0, 1 << 20, mayUnmap: true)));
        Assert.True(CompletedAtOnce(storage.DiscardAsync(0, 1 << 20)));
        Assert.True(CompletedAtOnce(storage.FlushAsync()));
        Assert.True(CompletedAtOnce(storage.SetLengthAsync(1 << 20)));
    }

    [Fact]
    public async Task ExtentsAreHolesClippedToTheLength()
    {
        await using var storage = new NullStorage(10_000);
        Assert.Equal(new StorageExtent(false, 10_000), await storage.GetExtentAsync(0, 1 << 20));
        Assert.Equal(new StorageExtent(false, 100), await storage.GetExtentAsync(500, 100));
        Assert.Equal(new StorageExtent(false, 4096), await storage.GetExtentAsync(20_000, 4096));
    }

    [Fact]
    public async Task SetLengthChangesTheLength()
    {
        await using var storage = new NullStorage(100);
        await storage.SetLengthAsync(1L << 40, Preallocation.Full);
        Assert.Equal(1L << 40, storage.Length);
        Assert.Equal(0, storage.AllocatedBytes);
    }

    [Fact]
    public async Task BadArgumentsAreRejected()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new NullStorage(-1));
        await using var storage = new NullStorage(100);
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(async () => await storage.ReadAsync(new byte[1], -1));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(async () => await storage.DiscardAsync(0, -1));
    }

    /// <summary>Whether the operation had finished when it returned (then completes it).</summary>
    internal static bool CompletedAtOnce(ValueTask task)
    {
        bool done = task.IsCompletedSuccessfully;
        task.GetAwaiter().GetResult();
        return done;
    }
}
