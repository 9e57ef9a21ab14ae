using static Strata.Qmp.Server.Schema.QapiMember;

namespace Strata.Qmp.Server.Schema;

/// <summary>
/// The QAPI types of blockdev-snapshot-sync, blockdev-snapshot, the internal snapshot commands and transaction, transcribed from
/// qemu-storage-daemon 7.2's schema (member order matters), with Strata's "relative-paths" in NewImageMode.
/// </summary>
public static class SnapshotTypes
{
    private static readonly QapiBuiltin Str = QapiBuiltin.Str;

    /// <summary>QEMU announces relative-paths in its documentation but never shipped it; Strata implements it.</summary>
    public static QapiEnum NewImageMode { get; } = new("NewImageMode", "existing", "absolute-paths", "relative-paths");

    public static QapiObject BlockdevSnapshotSync { get; } = new("BlockdevSnapshotSync",
        Opt("device", Str), Opt("node-name", Str), Req("snapshot-file", Str), Opt("snapshot-node-name", Str), Opt("format", Str),
        Opt("mode", NewImageMode));

    public static QapiObject BlockdevSnapshot { get; } = new("BlockdevSnapshot", Req("node", Str), Req("overlay", Str));

    /// <summary>Strata's extension: "name" may be omitted, a unique one is then generated (QEMU requires it).</summary>
    public static QapiObject BlockdevSnapshotInternal { get; } = new("BlockdevSnapshotInternal", Req("device", Str), Opt("name", Str));

    /// <summary>blockdev-snapshot-internal-sync's reply: {} as QEMU's, or the generated name when none was given.</summary>
    public static QapiObject BlockdevSnapshotInternalResult { get; } = new("StrataSnapshotInternalResult", Opt("name", Str));

    public static QapiObject BlockdevSnapshotDeleteInternalArgs { get; } = new("q_obj_blockdev-snapshot-delete-internal-sync-arg",
        Req("device", Str), Opt("id", Str), Opt("name", Str));

    public static QapiObject Abort { get; } = new("Abort");

    public static QapiEnum ActionCompletionMode { get; } = new("ActionCompletionMode", "individual", "grouped");

    public static QapiObject TransactionProperties { get; } = new("TransactionProperties", Opt("completion-mode", ActionCompletionMode));

    /// <summary>transaction's arguments for the given action kinds (each a "type" and a "data" wrapper, as QEMU's legacy union).</summary>
    public static QapiObject TransactionArgs(IReadOnlyList<(string Kind, QapiObject Data)> kinds)
    {
        var variants = kinds.Select(k => (k.Kind, new QapiObject(k.Data.Name + "Wrapper", Req("data", k.Data)))).ToArray();
        var action = new QapiObject("TransactionAction",
            [Req("type", new QapiEnum("TransactionActionKind", kinds.Select(k => k.Kind).ToArray()))], "type", variants);
        return new QapiObject("q_obj_transaction-arg", Req("actions", new QapiArray(action)), Opt("properties", TransactionProperties));
    }
}
