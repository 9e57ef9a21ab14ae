using Strata.Images.Bitmaps;

namespace Strata.Nbd.MetaContexts;

/// <summary>
/// "qemu:dirty-bitmap:NAME": flag 1 (NBD_STATE_DIRTY) over the dirty granules of a bitmap, 0 elsewhere, as QEMU
/// 7.2's bitmap_to_extents reports them: dirty areas found granule by granule, clipped to the request and to
/// INT32_MAX bytes each, with clean gaps between and a clean tail; neighbours with equal flags merge in the sink.
/// </summary>
public sealed class DirtyBitmapContext(string bitmapName, DirtyBitmap bitmap) : INbdMetaContextProvider
{
    public const string Prefix = "qemu:dirty-bitmap:";
    private const uint Dirty = 1;

    public string Name { get; } = Prefix + bitmapName;

    public DirtyBitmap Bitmap => bitmap;

    public ValueTask GetExtentsAsync(long offset, long length, NbdExtentSink sink, CancellationToken ct)
    {
        long end = offset + length;
        long start = offset;
        while (bitmap.NextDirtyArea(start, end, int.MaxValue) is (long dirtyStart, long dirtyLength))
        {
            if (!sink.TryAdd(dirtyStart - start, 0) || !sink.TryAdd(dirtyLength, Dirty))
                return ValueTask.CompletedTask;
            start = dirtyStart + dirtyLength;
        }
        sink.TryAdd(end - start, 0);
        return ValueTask.CompletedTask;
    }
}
