using Strata.Images.Storage;

namespace Strata.Block.Drivers.Blkdebug;

/// <summary>QAPI's BlkdebugIOType: which requests an inject-error rule fails.</summary>
public enum BlkdebugIoType { Read, Write, WriteZeroes, Discard, Flush, BlockStatus }

/// <summary>One [inject-error] or [set-state] rule (QEMU's BlkdebugRule).</summary>
public sealed class BlkdebugRule
{
    public required DebugEvent Event { get; init; }
    /// <summary>The state the rule waits for; 0 matches any state.</summary>
    public long State { get; init; }
    public bool IsInjectError { get; init; }

    public int Errno { get; init; } = 5; // EIO
    public bool Once { get; init; }
    public bool Immediately { get; init; }
    /// <summary>The byte offset a request must cover (sector * 512), or -1 for any request.</summary>
    public long Offset { get; init; } = -1;
    public int IoTypeMask { get; init; } = DefaultIoTypes;

    public long NewState { get; init; }

    /// <summary>Without iotype a rule fails everything but block-status, as QEMU's default mask.</summary>
    public const int DefaultIoTypes = (1 << (int)BlkdebugIoType.Read) | (1 << (int)BlkdebugIoType.Write) |
        (1 << (int)BlkdebugIoType.WriteZeroes) | (1 << (int)BlkdebugIoType.Discard) | (1 << (int)BlkdebugIoType.Flush);
}

/// <summary>
/// blkdebug's state machine: rules listed per event; an event runs the rules of the current state (set-state rules
/// choose the next state, applied once all have run; inject-error rules replace the active set); requests then fail
/// with the first active rule that matches their type and range. Thread-safe (events and requests come from any thread).
/// </summary>
public sealed class BlkdebugRules
{
    private readonly object _lock = new();
    // Per event in the order QEMU walks them: the rule added last first.
    private readonly List<BlkdebugRule>[] _byEvent = new List<BlkdebugRule>[DebugEvents.Names.Length];
    // QEMU inserts each activated rule at the head: the last one activated is checked first.
    private readonly List<BlkdebugRule> _active = [];

    /// <summary>The current state (QEMU starts at 1).</summary>
    public long State { get; private set; } = 1;

    /// <param name="rules">In QEMU's order of creation: the config file's inject-error rules, the options' ones, then set-state likewise.</param>
    public BlkdebugRules(IEnumerable<BlkdebugRule> rules)
    {
        foreach (var r in rules)
            (_byEvent[(int)r.Event] ??= []).Insert(0, r);
    }

    /// <summary>blkdebug_debug_event.</summary>
    public void OnEvent(DebugEvent e)
    {
        var list = _byEvent[(int)e];
        if (list == null)
            return;
        lock (_lock)
        {
            bool injected = false;
            long next = State;
            foreach (var rule in list)
            {
                if (rule.State != 0 && rule.State != State)
                    continue;
                if (rule.IsInjectError)
                {
                    if (!injected)
                    {
                        _active.Clear();
                        injected = true;
                    }
                    _active.Insert(0, rule);
                }
                else
                {
                    next = rule.NewState;
                }
            }
            State = next;
        }
    }

    /// <summary>
    /// rule_check: the errno the request fails with (0 if it goes through) and whether the failure is immediate.
    /// A rule with once is used up by the request it fails.
    /// </summary>
    public (int Errno, bool Immediately) Check(long offset, long length, BlkdebugIoType type)
    {
        lock (_lock)
        {
            if (_active.Count == 0)
                return (0, false);
            BlkdebugRule? hit = null;
            foreach (var rule in _active)
            {
                bool inRange = rule.Offset == -1 || (length > 0 && rule.Offset >= offset && rule.Offset < offset + length);
                if (inRange && (rule.IoTypeMask & (1 << (int)type)) != 0)
                {
                    hit = rule;
                    break;
                }
            }
            if (hit == null || hit.Errno == 0)
                return (0, false);
            if (hit.Once)
            {
                _active.Remove(hit);
                _byEvent[(int)hit.Event].Remove(hit);
            }
            return (hit.Errno, hit.Immediately);
        }
    }
}
