using Strata.Images.Storage;
using Xunit;

namespace Strata.Images.Tests.Storage;

public sealed class AlignedBufferTests
{
    [Theory]
    [InlineData(1, 512)]
    [InlineData(4096, 4096)]
    [InlineData(100_000, 65536)]
    public void AddressIsAlignedAndMemoryHasTheLength(int length, int alignment)
    {
        using var buffer = new AlignedBuffer(length, alignment, clear: true);
        Assert.Equal(0, buffer.Address % alignment);
        Assert.Equal(length, buffer.Memory.Length);
        Assert.All(buffer.GetSpan().ToArray(), b => Assert.Equal(0, b));

        using var pin = buffer.Memory[1..].Pin();
        unsafe
        {
            Assert.Equal(buffer.Address + 1, (nint)pin.Pointer);
        }
    }

    [Fact]
    public void BadAlignmentIsRejected()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new AlignedBuffer(10, 3));
        Assert.Throws<ArgumentOutOfRangeException>(() => new AlignedBuffer(10, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new AlignedBuffer(-1, 8));
    }

    [Fact]
    public void DisposeFreesOnceAndLaterUseThrows()
    {
        var buffer = new AlignedBuffer(4096, 4096);
        buffer.Dispose();
        buffer.Dispose();
        Assert.True(buffer.IsDisposed);
        Assert.Throws<ObjectDisposedException>(() => buffer.GetSpan());
    }
}
