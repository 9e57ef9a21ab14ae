using System.Buffers.Binary;
using Strata.Images.Storage;
using static Strata.Images.Qcow2.Qcow2Constants;

namespace Strata.Images.Qcow2;

/// <summary>What <c>qemu-img check -r</c> may fix: nothing, leaked clusters only, or everything it can.</summary>
public enum Qcow2RepairMode { None, Leaks, All }

/// <summary>
/// The outcome of one check pass, with QEMU's counters (<c>BdrvCheckResult</c>) and the lines qemu-img 7.2 prints
/// to stderr while checking, in the same words and order.
/// </summary>
public sealed record Qcow2CheckResult
{
    /// <summary>Inconsistencies that can hurt data: refcount below the references, bad entries, wrong COPIED flags.</summary>
    public long Corruptions { get; init; }

    /// <summary>Clusters with a refcount above their references (wasted space).</summary>
    public long Leaks { get; init; }

    /// <summary>Problems that kept parts of the image from being checked (I/O errors, unreadable refcounts).</summary>
    public long CheckErrors { get; init; }

    public long CorruptionsFixed { get; init; }
    public long LeaksFixed { get; init; }

    /// <summary>(highest cluster in use or with a refcount + 1) * cluster size, qemu-img's "Image end offset".</summary>
    public long ImageEndOffset { get; init; }

    /// <summary>Virtual size in clusters.</summary>
    public long TotalClusters { get; init; }

    /// <summary>Guest clusters the active L1/L2 tables map to host clusters (normal, preallocated zero, compressed).</summary>
    public long AllocatedClusters { get; init; }

    /// <summary>Allocated clusters not following the previous one of their L2 table on the host (all compressed ones).</summary>
    public long FragmentedClusters { get; init; }

    public long CompressedClusters { get; init; }

    /// <summary>The lines qemu-img prints to stderr during the check (at most <see cref="MaxStoredMessages"/>).</summary>
    public IReadOnlyList<string> Messages { get; init; } = [];

    /// <summary>Lines not kept in <see cref="Messages"/> because there were too many (the callback still saw them).</summary>
    public long MessagesOmitted { get; init; }

    /// <summary>
    /// Null when the check ran to its end; otherwise why it stopped, as the strerror text qemu-img prints after
    /// "Check failed: " (for example "Input/output error"). The counters then describe the part that ran.
    /// </summary>
    public string? Failure { get; init; }

    public const int MaxStoredMessages = 100_000;

    /// <summary>True when repairs were made; qemu-img then checks again (without repairing) and reports that second pass.</summary>
    public bool AnythingFixed => CorruptionsFixed > 0 || LeaksFixed > 0;

    /// <summary>qemu-img check's exit status for this result: 1 failed, 2 corruptions, 3 leaks only, 0 clean.</summary>
    public int ExitCode => Failure != null || CheckErrors > 0 ? 1 : Corruptions > 0 ? 2 : Leaks > 0 ? 3 : 0;
}

/// <summary>
/// <c>qemu-img check</c> for qcow2 (QEMU 7.2's qcow2_co_check_locked and qcow2_check_refcounts): counts every
/// reference to every host cluster in memory, compares the counts with the stored refcounts, checks the
/// COPIED flags of the active tables, and optionally repairs: leaked refcounts are lowered, missing ones raised,
/// the whole refcount structure rebuilt when it cannot be trusted, COPIED flags corrected, and the dirty and
/// corrupt bits cleared once the image is consistent.
/// </summary>
/// <remarks>
/// Open the image with <see cref="Qcow2OpenOptions.ForCheck"/> so that dirty or corrupt images open as they are.
/// A check without repair never writes. Like qemu-img, a caller that repaired something should run a second check
/// with <see cref="Qcow2RepairMode.None"/> and report that one. Memory is bounded by the file's size (the in-memory
/// refcounts only cover clusters that are referenced and at most one cluster past the end of the file), and the
/// metadata read is bounded by a multiple of it, so hostile images cannot make the check hang.
/// As in QEMU 7.2, a pass that rebuilt the refcount structure counts the allocation statistics twice (QEMU walks
/// the tables again after the rebuild); the second pass qemu-img runs after any repair reports them right.
/// </remarks>
public static partial class Qcow2Check
{
    /// <summary>Checks the image, repairing according to <paramref name="mode"/> (the image must then be writable).</summary>
    public static ValueTask<Qcow2CheckResult> CheckAsync(Qcow2Image image, Qcow2RepairMode mode, CancellationToken ct = default) =>
        CheckAsync(image, mode, null, ct);

    /// <summary>As <see cref="CheckAsync(Qcow2Image, Qcow2RepairMode, CancellationToken)"/>, passing every message line to <paramref name="onMessage"/> as it is produced.</summary>
    public static async ValueTask<Qcow2CheckResult> CheckAsync(Qcow2Image image, Qcow2RepairMode mode, Action<string>? onMessage, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(image);
        if (mode != Qcow2RepairMode.None && image.IsReadOnly)
            throw new ImageException($"'{image.FileName}' is opened read-only; it cannot be repaired");
        var fix = mode switch
        {
            Qcow2RepairMode.Leaks => Fix.Leaks,
            Qcow2RepairMode.All => Fix.Leaks | Fix.Errors,
            _ => Fix.None,
        };
        return await image.RunExclusiveForCheckAsync(fix != Fix.None, c => new Run(image, onMessage).ExecuteAsync(fix, c), ct).ConfigureAwait(false);
    }

    /// <summary>
    /// Repairs the image as QEMU does when a dirty (lazy refcounts) image is opened read-write; throws when the
    /// image could not be repaired.
    /// </summary>
    public static async ValueTask RepairAsync(Qcow2Image image, Qcow2RepairMode mode, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(image);
        if (mode == Qcow2RepairMode.None)
            return;
        var r = await CheckAsync(image, mode, null, ct).ConfigureAwait(false);
        if (r.Failure != null || r.CheckErrors > 0)
            throw new ImageException($"Could not repair dirty image '{image.FileName}': {r.Failure ?? "Input/output error"}");
    }

    [Flags]
    private enum Fix { None = 0, Leaks = 1, Errors = 2 }

    /// <summary>QEMU's BdrvCheckResult: a value type, so that a pass can be saved and restored as QEMU does.</summary>
    private struct Counts
    {
        public long Corruptions, Leaks, CheckErrors, CorruptionsFixed, LeaksFixed;
        public long ImageEndOffset, TotalClusters, Allocated, Fragmented, Compressed;

        /// <summary>qcow2_add_check_result.</summary>
        public void Add(in Counts src, bool allocationInfo)
        {
            Corruptions += src.Corruptions;
            Leaks += src.Leaks;
            CheckErrors += src.CheckErrors;
            CorruptionsFixed += src.CorruptionsFixed;
            LeaksFixed += src.LeaksFixed;
            if (allocationInfo)
            {
                ImageEndOffset = src.ImageEndOffset;
                TotalClusters = src.TotalClusters;
                Allocated = src.Allocated;
                Fragmented = src.Fragmented;
                Compressed = src.Compressed;
            }
        }
    }

    /// <summary>Ends a check early, as a negative return value ends QEMU's; <see cref="Reason"/> is the strerror text.</summary>
    private sealed class CheckFailedException(string reason) : Exception(reason)
    {
        public string Reason { get; } = reason;
    }

    private const string EIO = "Input/output error";
    private const string EFBIG = "File too large";
    private const string EINVAL = "Invalid argument";

    private sealed class MessageSink(Action<string>? callback)
    {
        public List<string> Lines { get; } = [];
        public long Omitted { get; private set; }
        public bool HasCallback => callback != null;

        public void Add(string line) => Add(line, 1);

        /// <summary>The same line <paramref name="times"/> times (cheap once the stored lines are full).</summary>
        public void Add(string line, long times)
        {
            for (long i = 0; i < times; i++)
            {
                callback?.Invoke(line);
                if (Lines.Count < Qcow2CheckResult.MaxStoredMessages)
                {
                    Lines.Add(line);
                }
                else if (callback == null)
                {
                    Omitted += times - i;
                    return;
                }
                else
                {
                    Omitted++;
                }
            }
        }
    }

    /// <summary>One check of one image; holds the in-memory refcounts and the counters.</summary>
    private sealed partial class Run
    {
        private readonly Qcow2Image _img;
        private readonly IStorage _file;
        private readonly Qcow2Header _h;
        private readonly MessageSink _log;
        private readonly int _cb, _cs, _order, _entrySize, _l2Entries, _blockBits;
        private readonly long _perBlock;
        private readonly bool _ext;
        private readonly ulong _rcMax;
        private Counts _res;
        private RefcountArray _imrt;
        private long _nb;
        private StoredRefcounts _stored;
        private List<Qcow2Snapshot> _snapshots = [];
        private long _snapshotsOffset, _snapshotsSize;
        private bool _rebuild;
        private bool _wrote;
        private bool _signaledCorruption;
        private bool _fatalCorruption;

        public Run(Qcow2Image img, Action<string>? onMessage)
        {
            _img = img;
            _file = img.Storage;
            _h = img.Header;
            _log = new MessageSink(onMessage);
            _cb = _h.ClusterBits;
            _cs = _h.ClusterSize;
            _order = _h.RefcountOrder;
            _ext = _h.ExtendedL2;
            _entrySize = _ext ? 16 : 8;
            _l2Entries = _cs / _entrySize;
            _blockBits = _cb + 3 - _order;
            _perBlock = 1L << _blockBits;
            _rcMax = _order == 6 ? ulong.MaxValue : (1UL << (1 << _order)) - 1;
            _imrt = new RefcountArray(_cs, _order);
            _stored = NewStoredRefcounts([]);
        }

        private void Log(string line) => _log.Add(line);

        private void Log(string line, long times) => _log.Add(line, times);

        /// <summary>qcow2_co_check_locked.</summary>
        public async ValueTask<Qcow2CheckResult> ExecuteAsync(Fix fix, CancellationToken ct)
        {
            var result = default(Counts);
            string? failure = null;
            int stage = 0; // 0 snapshot table, 1 refcounts, 2 snapshot fix, 3 done
            var snapRes = default(Counts);
            try
            {
                await ReadSnapshotTableAsync(fix, ct).ConfigureAwait(false);
                snapRes = _snapshotScratch;
                stage = 1;
                await CheckRefcountsAsync(fix, ct).ConfigureAwait(false);
                result.Add(_res, allocationInfo: true);
                stage = 2;
                if (_wrote)
                {
                    await _file.FlushAsync(ct).ConfigureAwait(false);
                    await _img.ReloadAfterCheckAsync(ct).ConfigureAwait(false);
                    _wrote = false;
                }
                await FixSnapshotTableAsync(fix, ct).ConfigureAwait(false);
                result.Add(_snapshotScratch, allocationInfo: false);
                stage = 3;
                if (fix != Fix.None && result.CheckErrors == 0 && result.Corruptions == 0)
                    await _img.MarkCleanAfterCheckAsync(ct).ConfigureAwait(false);
            }
            catch (Exception e) when (e is CheckFailedException or IOException)
            {
                failure = e is CheckFailedException cf ? cf.Reason : e.Message;
                if (e is IOException)
                {
                    Log($"ERROR: {e.Message}");
                    if (stage == 1)
                        _res.CheckErrors++;
                    else
                        _snapshotScratch.CheckErrors++;
                }
                switch (stage)
                {
                    case 0:
                        result.Add(_snapshotScratch, allocationInfo: false);
                        break;
                    case 1:
                        result.Add(_res, allocationInfo: true);
                        result.Add(snapRes, allocationInfo: false);
                        break;
                    case 2:
                        result.Add(_snapshotScratch, allocationInfo: false);
                        break;
                    default:
                        result.CheckErrors++;
                        break;
                }
            }
            finally
            {
                if (_wrote)
                {
                    await _file.FlushAsync(CancellationToken.None).ConfigureAwait(false);
                    await _img.ReloadAfterCheckAsync(CancellationToken.None).ConfigureAwait(false);
                }
            }

            return new Qcow2CheckResult
            {
                Corruptions = result.Corruptions,
                Leaks = result.Leaks,
                CheckErrors = result.CheckErrors,
                CorruptionsFixed = result.CorruptionsFixed,
                LeaksFixed = result.LeaksFixed,
                ImageEndOffset = result.ImageEndOffset,
                TotalClusters = result.TotalClusters,
                AllocatedClusters = result.Allocated,
                FragmentedClusters = result.Fragmented,
                CompressedClusters = result.Compressed,
                Messages = _log.Lines,
                MessagesOmitted = _log.Omitted,
                Failure = failure,
            };
        }

        // ---- Snapshot table (qcow2-snapshot.c) ----------------------------------------------------------

        /// <summary>The counters of the snapshot-table part of the check (QEMU's snapshot_res).</summary>
        private Counts _snapshotScratch;

        /// <summary>qcow2_check_read_snapshot_table.</summary>
        private async ValueTask ReadSnapshotTableAsync(Fix fix, CancellationToken ct)
        {
            _snapshotScratch = default;
            long offset = _h.SnapshotsOffset;
            int count = _h.SnapshotCount;
            if ((offset & (_cs - 1)) != 0 || long.MaxValue - count * (long)SnapshotTable.HeaderSize < offset)
            {
                _snapshotScratch.CheckErrors++;
                Log("qemu-img: ERROR snapshot table offset invalid");
                throw new CheckFailedException(EINVAL);
            }

            bool repair = (fix & Fix.Errors) != 0;
            var read = await SnapshotTable.ReadCoreAsync(_file, offset, count, VirtualDiskSize, repair, Log, ct).ConfigureAwait(false);
            if (read.Error != null)
            {
                _snapshotScratch.CheckErrors++;
                Log("qemu-img: ERROR failed to read the snapshot table: " + read.Error);
                if (read.Hint != null)
                    Log(read.Hint);
                throw new CheckFailedException(EFBIG);
            }
            var r = read.Result!;
            _snapshots = r.Snapshots;
            _snapshotsOffset = count > 0 ? offset : 0;
            _snapshotsSize = r.Size;
            _snapshotScratch.Corruptions += r.Discarded + r.ExtraDataTruncated;

            if (r.Discarded > 0)
            {
                // The header must agree with the table before refcounts are counted (this leaks, which the check fixes).
                var b = new byte[4];
                BinaryPrimitives.WriteUInt32BigEndian(b, (uint)_snapshots.Count);
                await _file.WriteAsync(b, 60, ct).ConfigureAwait(false);
                await _file.FlushAsync(ct).ConfigureAwait(false);
                _h.SnapshotCount = _snapshots.Count;
                _snapshotScratch.CorruptionsFixed += r.Discarded;
                _snapshotScratch.Corruptions -= r.Discarded;
            }

            if (_h.Version >= 3)
            {
                for (int i = 0; i < _snapshots.Count; i++)
                {
                    if (_snapshots[i].ExtraDataSize < SnapshotTable.MinV3ExtraDataSize)
                    {
                        _snapshotScratch.Corruptions++;
                        Log($"{(repair ? "Repairing" : "ERROR")} snapshot table entry {i} is incomplete");
                    }
                }
            }
        }

        /// <summary>qcow2_check_fix_snapshot_table: rewrites the table when reading it found something to repair.</summary>
        private async ValueTask FixSnapshotTableAsync(Fix fix, CancellationToken ct)
        {
            if (_snapshotScratch.Corruptions == 0 || (fix & Fix.Errors) == 0)
                return;
            try
            {
                var table = SnapshotTable.Serialize(_snapshots);
                await _img.RewriteSnapshotTableForCheckAsync(table, _snapshots.Count, _snapshotsOffset, _snapshotsSize, ct).ConfigureAwait(false);
                await _img.ReloadAfterCheckAsync(ct).ConfigureAwait(false);
            }
            catch (Exception e) when (e is ImageException or IOException)
            {
                _snapshotScratch.CheckErrors++;
                Log($"ERROR failed to update snapshot table: {e.Message}");
                throw new CheckFailedException(EIO);
            }
            _snapshotScratch.CorruptionsFixed += _snapshotScratch.Corruptions;
            _snapshotScratch.Corruptions = 0;
        }

        /// <summary>The virtual size as QEMU sees it (whole 512-byte sectors).</summary>
        private long VirtualDiskSize => _h.Size / 512 * 512;

        private static ulong BE64(byte[] b, int at) => BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan(at));

        /// <summary>%#x: "0" for zero, else 0x-prefixed lowercase hex.</summary>
        private static string AltHex(ulong v) => v == 0 ? "0" : "0x" + v.ToString("x");

        private bool Fixes(Fix fix, Fix what) => (fix & what) != 0;

        private const long BudgetBase = 256L << 20;
    }
}
