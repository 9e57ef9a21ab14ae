using Strata.Images;
using Strata.Images.Format;
using Strata.Images.Qcow2;

namespace Strata.Img.Cli;

/// <summary>
/// The -l argument of convert and measure: "snapshot.id=ID,snapshot.name=NAME" (either or both), or a bare ID or
/// name (an ID match wins, as bdrv_snapshot_load_tmp_by_id_or_name).
/// </summary>
public sealed record SnapshotParam(string? Id, string? Name, string? IdOrName)
{
    /// <summary>Parses -l; a bad snapshot.* list fails with qemu-img's two messages.</summary>
    public static SnapshotParam Parse(string arg)
    {
        if (!arg.StartsWith("snapshot.", StringComparison.Ordinal))
            return new SnapshotParam(null, null, arg);
        var opts = new QemuOpts([new OptDesc("snapshot.id", OptType.String, "snapshot id"), new OptDesc("snapshot.name", OptType.String, "snapshot name")]);
        try
        {
            opts.Parse(arg);
        }
        catch (OptsException e)
        {
            Io.Error(e.Message);
            throw Io.Fail($"Failed in parsing snapshot param '{arg}'");
        }
        return new SnapshotParam(opts.Get("snapshot.id"), opts.Get("snapshot.name"), null);
    }

    /// <summary>
    /// bdrv_snapshot_load_tmp: the snapshot's content as a read-only image (the caller disposes it before
    /// <paramref name="img"/>). Failures print "Failed to load snapshot: ..." and exit 1.
    /// </summary>
    public async Task<IImage> LoadAsync(IImage img)
    {
        if (img is not Qcow2Image q)
            throw Io.Fail($"Failed to load snapshot: Block format '{img.FormatName}' used by device '' does not support temporarily loading internal snapshots");
        try
        {
            if (IdOrName != null)
            {
                var list = await q.GetSnapshotsAsync();
                return Qcow2Image.FindSnapshot(list, IdOrName, null) >= 0
                    ? await q.OpenSnapshotAsync(IdOrName, null)
                    : await q.OpenSnapshotAsync(null, IdOrName);
            }
            if (Id == null && Name == null)
                throw Io.Fail("Failed to load snapshot: snapshot_id and name are both NULL");
            return await q.OpenSnapshotAsync(Id, Name);
        }
        catch (Exception e) when (e is ImageException or IOException)
        {
            string why = e is SnapshotException s ? s.Detail ?? s.Report ?? s.Errno : ImageOpen.Describe(e, img.FileName);
            throw Io.Fail($"Failed to load snapshot: {why}");
        }
    }
}
