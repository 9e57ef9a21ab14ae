using static Strata.Qmp.Server.Schema.QapiMember;

namespace Strata.Qmp.Server.Schema;

/// <summary>
/// The QAPI types of the block-dirty-bitmap-* commands and transaction actions and x-debug-block-dirty-bitmap-sha256,
/// transcribed from qemu-storage-daemon 7.2's schema (member order matters).
/// </summary>
public static class BitmapTypes
{
    private static readonly QapiBuiltin Str = QapiBuiltin.Str;
    private static readonly QapiBuiltin Bool = QapiBuiltin.Bool;

    public static QapiObject BlockDirtyBitmapAdd { get; } = new("BlockDirtyBitmapAdd",
        Req("node", Str), Req("name", Str), Opt("granularity", QapiBuiltin.UInt32), Opt("persistent", Bool), Opt("disabled", Bool));

    public static QapiObject BlockDirtyBitmap { get; } = new("BlockDirtyBitmap", Req("node", Str), Req("name", Str));

    public static QapiObject BlockDirtyBitmapMerge { get; } = new("BlockDirtyBitmapMerge",
        Req("node", Str), Req("target", Str), Req("bitmaps", new QapiArray(QmpTypes.BlockDirtyBitmapOrStr)));

    public static QapiObject BlockDirtyBitmapSha256 { get; } = new("BlockDirtyBitmapSha256", Req("sha256", Str));
}
