namespace Strata.Images.Storage;

/// <summary>
/// Told of each change a storage is asked to make, before it makes it, whoever asks: what the dirty bitmaps of a
/// protocol node need, since in QEMU they see every write to their file, the format driver's above them included.
/// </summary>
public interface IStorageObserver
{
    /// <summary>
    /// [offset, offset+length) is about to be written, zeroed (<paramref name="discard"/> false: it may extend the
    /// file) or discarded.
    /// </summary>
    void Changing(long offset, long length, bool discard);

    /// <summary>The storage was truncated or extended to <paramref name="length"/>.</summary>
    void Resized(long length);
}
