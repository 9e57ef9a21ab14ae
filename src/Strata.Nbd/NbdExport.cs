using System.Text;
using Strata.Images.Format;
using Strata.Nbd.MetaContexts;
using Strata.Nbd.Protocol;

namespace Strata.Nbd;

/// <summary>Options of one export (qsd's <c>block-export-add type=nbd</c> members).</summary>
public sealed record NbdExportOptions
{
    /// <summary>Free text sent with LIST and INFO/GO (NBD_INFO_DESCRIPTION); at most 4096 bytes.</summary>
    public string? Description { get; init; }

    /// <summary>Clients may write (qsd's <c>writable</c>; off by default, as in qsd).</summary>
    public bool Writable { get; init; }

    /// <summary>Offer the "qemu:allocation-depth" meta context (qsd's <c>allocation-depth</c>).</summary>
    public bool AllocationDepth { get; init; }

    /// <summary>Advertise NBD_FLAG_CAN_MULTI_CONN (qsd 7.2 always does: every connection shares one image and its cache).</summary>
    public bool MultiConn { get; init; } = true;

    /// <summary>
    /// Further meta contexts (e.g. dirty bitmaps), offered after base:allocation and qemu:allocation-depth with the
    /// ids 2, 3, … in this order.
    /// </summary>
    public IReadOnlyList<INbdMetaContextProvider> MetaContexts { get; init; } = [];

    /// <summary>
    /// Whether block status (sparse READ replies, base:allocation) looks through qcow2 data clusters for holes in the
    /// host file: null follows QEMU (only for images that look metadata-preallocated), true/false force it.
    /// </summary>
    public bool? ProbeStorageHoles { get; init; }
}

/// <summary>
/// An image offered under a name. The export does not own the image: the caller disposes it after the export has
/// been removed from every server (removal waits for requests in flight).
/// </summary>
public sealed class NbdExport
{
    private readonly INbdMetaContextProvider?[] _contexts; // index = context id

    public NbdExport(string name, IImage image, NbdExportOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(image);
        options ??= new NbdExportOptions();
        if (Encoding.UTF8.GetByteCount(name) > NbdConstants.MaxStringSize)
            throw new ArgumentException($"export name '{name}' too long", nameof(name));
        if (options.Description != null && Encoding.UTF8.GetByteCount(options.Description) > NbdConstants.MaxStringSize)
            throw new ArgumentException($"description '{options.Description}' too long", nameof(options));
        if (options.Writable && image.IsReadOnly)
            throw new ArgumentException($"'{image.FileName}' is opened read-only and cannot be exported writable", nameof(options));

        Name = name;
        Image = image;
        Options = options;
        NameBytes = Encoding.UTF8.GetBytes(name);
        DescriptionBytes = options.Description == null ? null : Encoding.UTF8.GetBytes(options.Description);
        // QEMU exports whole sectors only (QEMU_ALIGN_DOWN(size, BDRV_SECTOR_SIZE)).
        Size = image.Size & ~511L;

        var flags = NbdTransmissionFlags.HasFlags | NbdTransmissionFlags.SendFlush | NbdTransmissionFlags.SendFua | NbdTransmissionFlags.SendCache;
        if (options.Writable)
            flags |= NbdTransmissionFlags.SendTrim | NbdTransmissionFlags.SendWriteZeroes | NbdTransmissionFlags.SendFastZero;
        else
            flags |= NbdTransmissionFlags.ReadOnly;
        if (options.MultiConn)
            flags |= NbdTransmissionFlags.CanMultiConn;
        TransmissionFlags = flags;

        Chain = new ChainStatus(options.ProbeStorageHoles);
        _contexts = new INbdMetaContextProvider?[2 + options.MetaContexts.Count];
        _contexts[0] = new BaseAllocationContext(image, Chain);
        _contexts[1] = options.AllocationDepth ? new AllocationDepthContext(image, Chain) : null;
        for (int i = 0; i < options.MetaContexts.Count; i++)
        {
            var p = options.MetaContexts[i] ?? throw new ArgumentException("null meta context provider", nameof(options));
            if (string.IsNullOrEmpty(p.Name) || !p.Name.Contains(':', StringComparison.Ordinal) || Encoding.UTF8.GetByteCount(p.Name) > NbdConstants.MaxStringSize)
                throw new ArgumentException($"invalid meta context name '{p.Name}'", nameof(options));
            // A name offered twice gets two ids, as QEMU does for a bitmap listed twice; only the built-in ones are unique.
            if (p.Name is BaseAllocationContext.ContextName or AllocationDepthContext.ContextName)
                throw new ArgumentException($"meta context '{p.Name}' is offered twice", nameof(options));
            _contexts[2 + i] = p;
        }
    }

    public string Name { get; }

    public string? Description => Options.Description;

    public IImage Image { get; }

    public NbdExportOptions Options { get; }

    public bool Writable => Options.Writable;

    /// <summary>Size advertised to clients: the image size rounded down to 512 bytes, as QEMU does.</summary>
    public long Size { get; }

    /// <summary>Transmission flags before structured replies (SEND_DF is added for clients that negotiated them).</summary>
    public NbdTransmissionFlags TransmissionFlags { get; }

    /// <summary>Request alignment reported as the minimum block size to clients that ask (1, or the O_DIRECT alignment).</summary>
    public int RequestAlignment => Math.Max(1, Image.Storage.RequestAlignment);

    internal byte[] NameBytes { get; }

    internal byte[]? DescriptionBytes { get; }

    internal ChainStatus Chain { get; }

    /// <summary>Meta contexts by id (null where an id is unused: qemu:allocation-depth when not enabled).</summary>
    internal ReadOnlySpan<INbdMetaContextProvider?> ContextsById => _contexts;

    public override string ToString() => Name;
}
