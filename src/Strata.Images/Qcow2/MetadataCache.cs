using Strata.Images.Storage;

namespace Strata.Images.Qcow2;

/// <summary>One cached cluster-sized metadata table (an L2 table or a refcount block).</summary>
internal sealed class CachedTable
{
    private readonly MetadataCache _owner;
    private bool _dirty;

    public CachedTable(MetadataCache owner, long offset, byte[] data)
    {
        _owner = owner;
        Offset = offset;
        Data = data;
    }

    public long Offset { get; }
    public byte[] Data { get; }

    public bool Dirty
    {
        get => _dirty;
        set
        {
            if (_dirty != value)
                _owner.DirtyCount += value ? 1 : -1;
            _dirty = value;
        }
    }

    public long LastUse { get; set; }
}

/// <summary>
/// A bounded write-back cache of metadata tables keyed by host offset. Not thread-safe: the owning image
/// calls it only under its metadata lock. Tables are evicted only by <see cref="Trim"/>, which the image calls
/// when it releases the lock, so a table obtained under the lock stays cached as long as the lock is held.
/// Dirty tables are never evicted; the image flushes them (in its crash-safe order) when too many are dirty,
/// so capacity is a soft bound.
/// </summary>
internal sealed class MetadataCache
{
    private readonly Dictionary<long, CachedTable> _tables = [];
    private readonly IStorage _storage;
    private readonly int _tableSize;
    private long _clock;

    public MetadataCache(IStorage storage, int tableSize, int capacity)
    {
        _storage = storage;
        _tableSize = tableSize;
        Capacity = Math.Max(2, capacity);
    }

    public int Capacity { get; }
    public int Count => _tables.Count;

    public bool HasDirty => DirtyCount > 0;

    /// <summary>Counts tables that left the cache: a table held since this last changed is still the cached one.</summary>
    public int Removals { get; private set; }

    /// <summary>What a table read from the file and a table written back tell a blkdebug file (l2_load, l2_update, ...).</summary>
    public DebugEvent? LoadEvent { get; init; }
    public DebugEvent? UpdateEvent { get; init; }

    /// <summary>Dirty tables, kept up to date by <see cref="CachedTable.Dirty"/>.</summary>
    public int DirtyCount { get; internal set; }

    public async ValueTask<CachedTable> GetAsync(long offset, CancellationToken ct)
    {
        if (_tables.TryGetValue(offset, out var t))
        {
            t.LastUse = ++_clock;
            return t;
        }
        var data = new byte[_tableSize];
        if (LoadEvent is { } load)
            _storage.Event(load);
        await _storage.ReadAsync(data, offset, ct).ConfigureAwait(false);
        return Insert(offset, data);
    }

    /// <summary>A table for a freshly allocated cluster: starts zeroed (or with <paramref name="contents"/>) and dirty; nothing is read.</summary>
    public CachedTable GetEmpty(long offset, ReadOnlySpan<byte> contents = default)
    {
        if (!_tables.TryGetValue(offset, out var t))
            t = Insert(offset, new byte[_tableSize]);
        else
            Array.Clear(t.Data);
        contents.CopyTo(t.Data);
        t.Dirty = true;
        t.LastUse = ++_clock;
        return t;
    }

    public CachedTable? TryGet(long offset) => _tables.GetValueOrDefault(offset);

    /// <summary>Forgets a table whose cluster was freed (its contents must never be written back).</summary>
    public void Discard(long offset)
    {
        if (_tables.Remove(offset, out var t))
        {
            t.Dirty = false;
            Removals++;
        }
    }

    private CachedTable Insert(long offset, byte[] data)
    {
        var t = new CachedTable(this, offset, data) { LastUse = ++_clock };
        _tables[offset] = t;
        return t;
    }

    /// <summary>Evicts least recently used clean tables until the cache is within capacity (or only dirty ones are left).</summary>
    public void Trim()
    {
        if (_tables.Count <= Capacity)
            return;
        var clean = new List<CachedTable>();
        foreach (var t in _tables.Values)
            if (!t.Dirty)
                clean.Add(t);
        clean.Sort((a, b) => a.LastUse.CompareTo(b.LastUse));
        for (int i = 0; i < clean.Count && _tables.Count > Capacity; i++)
        {
            _tables.Remove(clean[i].Offset);
            Removals++;
        }
    }

    /// <summary>Adds the dirty tables to <paramref name="into"/> (still dirty: the caller writes them and then marks them clean).</summary>
    public void CollectDirty(List<CachedTable> into)
    {
        if (DirtyCount == 0)
            return;
        foreach (var t in _tables.Values)
            if (t.Dirty)
                into.Add(t);
    }

    /// <summary>Writes every dirty table (in offset order, so neighbouring tables go out together) and marks them clean.</summary>
    public async ValueTask WriteDirtyAsync(CancellationToken ct)
    {
        List<CachedTable>? dirty = null;
        foreach (var t in _tables.Values)
            if (t.Dirty)
                (dirty ??= []).Add(t);
        if (dirty == null)
            return;
        dirty.Sort((a, b) => a.Offset.CompareTo(b.Offset));
        foreach (var t in dirty)
        {
            if (UpdateEvent is { } update)
                _storage.Event(update);
            await _storage.WriteAsync(t.Data, t.Offset, ct).ConfigureAwait(false);
            t.Dirty = false;
        }
    }

    public void Clear()
    {
        _tables.Clear();
        Removals++;
        DirtyCount = 0;
    }
}
