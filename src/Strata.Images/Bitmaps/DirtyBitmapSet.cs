namespace Strata.Images.Bitmaps;

/// <summary>What an operation needs of a bitmap (QEMU's BDRV_BITMAP_* check flags).</summary>
[Flags]
public enum BitmapCheck
{
    None = 0,
    Busy = 1,
    ReadOnly = 2,
    Inconsistent = 4,
    /// <summary>Changing the bits: not busy, not read-only, consistent (BDRV_BITMAP_DEFAULT).</summary>
    Default = Busy | ReadOnly | Inconsistent,
    /// <summary>Reading the bits or toggling enabled: not busy, consistent (BDRV_BITMAP_ALLOW_RO).</summary>
    AllowReadOnly = Busy | Inconsistent,
}

/// <summary>A bitmap operation was refused; the message is QEMU's, <see cref="Hint"/> its error hint when it has one.</summary>
public sealed class BitmapException(string message, string? hint = null) : ImageException(message)
{
    public string? Hint { get; } = hint;
}

/// <summary>
/// The dirty bitmaps of one node (QEMU's bs->dirty_bitmaps). The newest comes first, as in QEMU's list, which
/// decides where new persistent bitmaps land in the qcow2 directory. Every guest write, zero and discard of the
/// node goes through <see cref="RecordWrite"/>: a no-op unless some bitmap is enabled.
/// </summary>
public sealed class DirtyBitmapSet
{
    public const int MaxNameLength = 1023;

    private readonly Lock _gate = new();
    private DirtyBitmap[] _list = [];
    private DirtyBitmap[] _enabled = [];

    /// <summary>Snapshot of the bitmaps, newest first.</summary>
    public IReadOnlyList<DirtyBitmap> All => Volatile.Read(ref _list);

    public bool HasEnabled => Volatile.Read(ref _enabled).Length > 0;

    public DirtyBitmap? Find(string name)
    {
        foreach (var b in All)
            if (b.Name == name)
                return b;
        return null;
    }

    /// <summary>The named bitmap, or QEMU's "Dirty bitmap 'NAME' not found".</summary>
    public DirtyBitmap Lookup(string name) => Find(name) ?? throw new BitmapException($"Dirty bitmap '{name}' not found");

    /// <summary>Marks [offset, offset+length) dirty in every enabled bitmap (bdrv_set_dirty).</summary>
    public void RecordWrite(long offset, long length)
    {
        var enabled = Volatile.Read(ref _enabled);
        foreach (var b in enabled)
            b.SetRange(offset, length);
    }

    /// <summary>Adds a bitmap (bdrv_create_dirty_bitmap): names are unique, at most 1023 bytes.</summary>
    public void Add(DirtyBitmap bitmap)
    {
        lock (_gate)
        {
            if (bitmap.Name is { } name)
            {
                if (Find(name) != null)
                    throw new BitmapException($"Bitmap already exists: {name}");
                if (System.Text.Encoding.UTF8.GetByteCount(name) > MaxNameLength)
                    throw new BitmapException($"Bitmap name too long: {name}");
            }
            _list = [bitmap, .. _list];
            RefreshEnabled();
        }
    }

    public void Remove(DirtyBitmap bitmap)
    {
        lock (_gate)
        {
            _list = [.. _list.Where(b => !ReferenceEquals(b, bitmap))];
            RefreshEnabled();
        }
    }

    /// <summary>Turns recording on or off (block-dirty-bitmap-enable/-disable).</summary>
    public void SetEnabled(DirtyBitmap bitmap, bool enabled)
    {
        Check(bitmap, BitmapCheck.AllowReadOnly);
        lock (_gate)
        {
            bitmap.Enabled = enabled;
            RefreshEnabled();
        }
    }

    /// <summary>Call after changing <see cref="DirtyBitmap.Enabled"/> or <see cref="DirtyBitmap.Inconsistent"/> directly.</summary>
    public void RefreshEnabled()
    {
        lock (_gate)
            Volatile.Write(ref _enabled, [.. _list.Where(b => b.Enabled && !b.Inconsistent && !b.ReadOnly)]);
    }

    /// <summary>bdrv_dirty_bitmap_check: refuses a bitmap that the operation may not use, with QEMU's messages.</summary>
    public static void Check(DirtyBitmap bitmap, BitmapCheck flags)
    {
        if ((flags & BitmapCheck.Busy) != 0 && bitmap.Busy)
            throw new BitmapException($"Bitmap '{bitmap.Name}' is currently in use by another operation and cannot be used");
        if ((flags & BitmapCheck.ReadOnly) != 0 && bitmap.ReadOnly)
            throw new BitmapException($"Bitmap '{bitmap.Name}' is readonly and cannot be modified");
        if ((flags & BitmapCheck.Inconsistent) != 0 && bitmap.Inconsistent)
            throw new BitmapException($"Bitmap '{bitmap.Name}' is inconsistent and cannot be used",
                "Try block-dirty-bitmap-remove to delete this bitmap from disk\n");
    }

    /// <summary>block-dirty-bitmap-clear.</summary>
    public static void ClearBits(DirtyBitmap bitmap)
    {
        Check(bitmap, BitmapCheck.Default);
        bitmap.Clear();
    }

    /// <summary>block-dirty-bitmap-merge of one source into <paramref name="target"/> (bdrv_merge_dirty_bitmap).</summary>
    public static void Merge(DirtyBitmap target, DirtyBitmap source)
    {
        Check(target, BitmapCheck.Default);
        Check(source, BitmapCheck.AllowReadOnly);
        if (target.Size != source.Size)
            throw new BitmapException($"Bitmaps are of different sizes (destination size is {target.Size}, source size is {source.Size}) and can't be merged");
        target.Merge(source);
    }

    /// <summary>
    /// QEMU's default granularity for a new bitmap (bdrv_get_default_bitmap_granularity): the cluster size,
    /// kept within 4 KiB to 64 KiB.
    /// </summary>
    public static uint DefaultGranularity(int clusterSize) => (uint)Math.Min(65536, Math.Max(4096, clusterSize));
}
