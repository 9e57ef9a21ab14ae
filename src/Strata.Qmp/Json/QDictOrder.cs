using System.Text;

namespace Strata.Qmp.Json;

/// <summary>
/// The order in which QEMU prints the members of a JSON object. QEMU keeps objects in a
/// QDict: a hash table of 512 buckets (qobject/qdict.c, tdb_hash) where a new key goes to the
/// head of its bucket; printing walks the buckets in order. So QEMU's output order is by bucket,
/// and within a bucket the key inserted last comes first. Given the keys in insertion order
/// (the QAPI schema's member order for generated replies, the order received for echoed
/// values), <see cref="Order"/> yields QEMU's printing order.
/// </summary>
public static class QDictOrder
{
    /// <summary>Number of hash buckets of a QDict (QDICT_BUCKET_MAX).</summary>
    public const int BucketCount = 512;

    /// <summary>QEMU's tdb_hash over the key's UTF-8 bytes.</summary>
    public static uint Hash(ReadOnlySpan<byte> key)
    {
        unchecked
        {
            var value = 0x238F13AFu * (uint)key.Length;
            for (var i = 0; i < key.Length; i++)
            {
                value += (uint)key[i] << (i * 5 % 24);
            }

            return (1103515243u * value) + 12345u;
        }
    }

    /// <summary>The bucket a key falls in.</summary>
    public static int Bucket(string key)
    {
        Span<byte> small = stackalloc byte[128];
        var count = Encoding.UTF8.GetByteCount(key);
        var bytes = count <= small.Length ? small[..count] : new byte[count];
        Encoding.UTF8.GetBytes(key, bytes);
        return (int)(Hash(bytes) % BucketCount);
    }

    /// <summary>
    /// Positions (into <paramref name="keysInInsertionOrder"/>) in QEMU's printing order.
    /// </summary>
    public static int[] Order(IReadOnlyList<string> keysInInsertionOrder)
    {
        var n = keysInInsertionOrder.Count;
        var buckets = new int[n];
        var order = new int[n];
        for (var i = 0; i < n; i++)
        {
            buckets[i] = Bucket(keysInInsertionOrder[i]);
            order[i] = i;
        }

        // By bucket ascending; within a bucket, the last inserted first.
        Array.Sort(order, (a, b) => buckets[a] != buckets[b] ? buckets[a].CompareTo(buckets[b]) : b.CompareTo(a));
        return order;
    }

    /// <summary>The keys in QEMU's printing order.</summary>
    public static IReadOnlyList<string> Sort(IReadOnlyList<string> keysInInsertionOrder) =>
        [.. Order(keysInInsertionOrder).Select(i => keysInInsertionOrder[i])];
}
