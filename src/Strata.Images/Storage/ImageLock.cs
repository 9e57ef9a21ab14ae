using Microsoft.Win32.SafeHandles;
using static Strata.Images.Storage.LinuxNative;

namespace Strata.Images.Storage;

/// <summary>What the users of a file do with it and let others do, as QEMU's BLK_PERM_* bits (the lock byte offsets follow them).</summary>
[Flags]
public enum LockPermissions
{
    None = 0,
    ConsistentRead = 1,
    Write = 2,
    WriteUnchanged = 4,
    Resize = 8,
    All = ConsistentRead | Write | WriteUnchanged | Resize,
}

/// <summary>QEMU's file-posix "locking" option.</summary>
public enum LockingMode { Auto, On, Off }

/// <summary>Another process (or another open of the same file) holds a lock that conflicts with the permissions asked for.</summary>
public sealed class ImageLockException : ImageException
{
    public ImageLockException(string message, string? hint) : base(message) => Hint = hint;

    /// <summary>QEMU's error hint, printed on its own line by the command-line tools (never part of a QMP error).</summary>
    public string? Hint { get; }
}

/// <summary>
/// QEMU-compatible image locking on one open file, as file-posix does it: a shared OFD lock on byte 100+bit for each
/// permission its users hold and on byte 200+bit for each permission they do not share. A conflict is found by asking
/// whether another open file description holds the opposite byte. Locks change in QEMU's two steps: <see cref="Prepare"/>
/// takes the new bytes and tests for conflicts (keeping the old ones), then <see cref="Commit"/> drops what is no longer
/// needed, or <see cref="Abort"/> goes back to the old state. Not thread-safe: the control plane serialises permission changes.
/// </summary>
public sealed class ImageLock
{
    private const int PermBase = 100;
    private const int SharedBase = 200;
    private const int PermCount = 4;

    private static readonly string[] PermNames = ["consistent read", "write", "write unchanged", "resize"];

    private readonly SafeFileHandle _fd;
    private LockPermissions _lockedPerm;   // bytes 100+bit we hold
    private LockPermissions _lockedUnshared; // bytes 200+bit we hold

    internal ImageLock(SafeFileHandle fd, string fileName, LockingMode mode)
    {
        _fd = fd;
        FileName = fileName;
        // OFD locks exist on every Linux Strata runs on, so auto means on.
        Enabled = mode != LockingMode.Off;
    }

    /// <summary>The file name the hint shows (as the user gave it).</summary>
    public string FileName { get; }

    public bool Enabled { get; }

    /// <summary>The committed permissions (QEMU's s->perm), none until a user takes some.</summary>
    public LockPermissions Permissions { get; private set; }

    /// <summary>The committed shared permissions (QEMU's s->shared_perm), all until a user restricts them.</summary>
    public LockPermissions Shared { get; private set; } = LockPermissions.All;

    /// <summary>
    /// raw_handle_perm_lock(PREPARE): takes the lock bytes the new permissions need on top of the current ones and checks
    /// that no other holder conflicts. On failure the locks are back as they were and an <see cref="ImageLockException"/>
    /// says which permission failed.
    /// </summary>
    public void Prepare(LockPermissions perm, LockPermissions shared)
    {
        if (!Enabled || _fd.IsClosed)
            return;
        if ((Permissions | perm) == Permissions && (Shared & shared) == Shared)
            return; // nothing new to lock
        try
        {
            Apply(Permissions | perm, ~Shared | ~shared, unlock: false);
            Check(perm, shared);
        }
        catch (ImageLockException)
        {
            Abort();
            throw;
        }
    }

    /// <summary>raw_handle_perm_lock(COMMIT): keeps exactly the bytes of the new permissions.</summary>
    public void Commit(LockPermissions perm, LockPermissions shared)
    {
        if (Enabled && !_fd.IsClosed)
        {
            try
            {
                Apply(perm, ~shared, unlock: true);
            }
            catch (ImageLockException)
            {
                // QEMU only warns when it cannot drop a lock: the permission change itself has happened.
            }
        }
        Permissions = perm;
        Shared = shared;
    }

    /// <summary>raw_handle_perm_lock(ABORT): back to the bytes of the committed permissions.</summary>
    public void Abort()
    {
        if (!Enabled || _fd.IsClosed)
            return;
        try
        {
            Apply(Permissions, ~Shared, unlock: true);
        }
        catch (ImageLockException)
        {
            // As in QEMU: nothing more can be done about a lock that will not go.
        }
    }

    /// <summary>Prepare then commit: for users that change permissions in one step (strata-img).</summary>
    public void Set(LockPermissions perm, LockPermissions shared)
    {
        Prepare(perm, shared);
        Commit(perm, shared);
    }

    /// <summary>raw_apply_lock_bytes: takes the missing bytes, in bit order, and with <paramref name="unlock"/> drops the extra ones.</summary>
    private void Apply(LockPermissions perm, LockPermissions unshared, bool unlock)
    {
        ApplyBytes(PermBase, perm, ref _lockedPerm, unlock);
        ApplyBytes(SharedBase, unshared, ref _lockedUnshared, unlock);
    }

    /// <summary>One range of lock bytes (permissions or unshared permissions): byte base+i stands for bit i.</summary>
    private void ApplyBytes(int byteBase, LockPermissions wanted, ref LockPermissions held, bool unlock)
    {
        for (int i = 0; i < PermCount; i++)
        {
            var bit = (LockPermissions)(1 << i);
            if ((wanted & bit) != 0 && (held & bit) == 0)
            {
                Lock(byteBase + i);
                held |= bit;
            }
            else if (unlock && (held & bit) != 0 && (wanted & bit) == 0)
            {
                Unlock(byteBase + i);
                held &= ~bit;
            }
        }
    }

    private void Lock(int offset)
    {
        int errno = OfdSetLock(_fd, F_RDLCK, offset, 1);
        if (errno != 0)
            throw LockError($"Failed to lock byte {offset}", errno, hint: false);
    }

    private void Unlock(int offset)
    {
        int errno = OfdSetLock(_fd, F_UNLCK, offset, 1);
        if (errno != 0)
            throw LockError($"Failed to unlock byte {offset}", errno, hint: false);
    }

    /// <summary>
    /// raw_check_lock_bytes: for each permission taken, is its "unshared" byte held by someone else; then for each permission
    /// not shared, is its "taken" byte held by someone else.
    /// </summary>
    private void Check(LockPermissions perm, LockPermissions shared)
    {
        for (int i = 0; i < PermCount; i++)
        {
            if ((perm & (LockPermissions)(1 << i)) != 0 && Conflicts(SharedBase + i) is int errno)
                throw LockError($"Failed to get \"{PermNames[i]}\" lock", errno);
        }
        for (int i = 0; i < PermCount; i++)
        {
            if ((shared & (LockPermissions)(1 << i)) == 0 && Conflicts(PermBase + i) is int errno)
                throw LockError($"Failed to get shared \"{PermNames[i]}\" lock", errno);
        }
    }

    /// <summary>Null if no other open file description holds the byte, else the errno to report (EAGAIN for a holder).</summary>
    private int? Conflicts(int offset)
    {
        int r = OfdTestLock(_fd, F_WRLCK, offset, 1);
        if (r < 0)
            return -r;
        return r == F_UNLCK ? null : EAGAIN;
    }

    private const int EAGAIN = 11;

    /// <summary>QEMU adds the errno text to lock errors, except for EAGAIN (someone else holds the lock).</summary>
    /// Only a conflict found by the check comes with the hint about another process.
    private ImageLockException LockError(string message, int errno, bool hint = true) =>
        new(errno == EAGAIN ? message : $"{message}: {Describe(errno)}", hint ? $"Is another process using the image [{FileName}]?" : null);

    /// <summary>The lock bytes (100-103, 200-203) some other open file description holds on <paramref name="path"/>: for tests and tools.</summary>
    public static IReadOnlyList<int> ProbeHeldBytes(string path)
    {
        int fd = LinuxNative.Open(path, O_RDONLY | O_CLOEXEC, 0);
        if (fd < 0)
            throw new IOException($"Could not open '{path}': {Describe(-fd)}", -fd);
        using var handle = new SafeFileHandle(fd, ownsHandle: true);
        var held = new List<int>();
        foreach (int b in (ReadOnlySpan<int>)[100, 101, 102, 103, 200, 201, 202, 203])
        {
            int r = OfdTestLock(handle, F_WRLCK, b, 1);
            if (r < 0)
                throw new IOException($"Could not test the locks of '{path}': {Describe(-r)}", -r);
            if (r != F_UNLCK)
                held.Add(b);
        }
        return held;
    }
}
