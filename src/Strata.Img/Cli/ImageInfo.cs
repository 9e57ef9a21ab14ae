using System.Globalization;
using System.Text;
using Strata.Images.Format;
using Strata.Images.Qcow2;

namespace Strata.Img.Cli;

/// <summary>
/// QEMU's ImageInfo for one image (bdrv_query_image_info), its JSON form and its human dump (bdrv_image_info_dump).
/// Snapshots and bitmaps are filled in by <see cref="Extensions"/> (a later addition), which run after the basic fields.
/// </summary>
public sealed class ImageInfo
{
    public required string Filename { get; init; }
    public required string Format { get; init; }
    public bool? DirtyFlag { get; set; }
    public long? ActualSize { get; set; }
    public long VirtualSize { get; set; }
    public long? ClusterSize { get; set; }
    public bool? Encrypted { get; set; }
    public string? BackingFilename { get; set; }
    public string? FullBackingFilename { get; set; }
    public string? BackingFilenameFormat { get; set; }
    /// <summary>QEMU's SnapshotInfoList as a list of dicts (id, name, vm-state-size, date-sec, ...), when there are snapshots.</summary>
    public QList? Snapshots { get; set; }
    /// <summary>ImageInfoSpecific: { "type": fmt, "data": { ... } }.</summary>
    public QDict? FormatSpecific { get; set; }

    /// <summary>Hooks that add to the info of an open image (snapshot list, bitmaps in format-specific data).</summary>
    public static List<Func<IImage, ImageInfo, CancellationToken, ValueTask>> Extensions { get; } = [];

    /// <summary>Human dump of one snapshot table (header line and rows); set by the snapshot support.</summary>
    public static Action<StringBuilder, QList>? SnapshotDumper { get; set; }

    public static async ValueTask<ImageInfo> CollectAsync(IImage img, string filename, CancellationToken ct = default)
    {
        var info = new ImageInfo
        {
            Filename = filename,
            Format = img.FormatName,
            VirtualSize = ImageIo.VirtualSize(img),
            DirtyFlag = false,
        };
        long actual = img.Storage.AllocatedBytes;
        if (actual >= 0)
            info.ActualSize = actual;
        if (img is Qcow2Image q)
        {
            var h = q.Header;
            info.ClusterSize = h.ClusterSize;
            info.DirtyFlag = h.IsDirty;
            if (h.CryptMethod != 0)
                info.Encrypted = true;
            var data = new QDict();
            if (h.Version == 2)
            {
                data.Put("compat", "0.10");
                data.Put("refcount-bits", (long)h.RefcountBits);
                data.Put("compression-type", CompressionName(h.CompressionType));
            }
            else
            {
                data.Put("compat", "1.1");
                if (h.ExternalDataFile != null)
                    data.Put("data-file", h.ExternalDataFile);
                if (h.ExternalDataFile != null)
                    data.Put("data-file-raw", (h.AutoclearFeatures & 2) != 0);
                data.Put("extended-l2", h.ExtendedL2);
                data.Put("lazy-refcounts", h.LazyRefcounts);
                data.Put("corrupt", h.IsCorrupt);
                data.Put("refcount-bits", (long)h.RefcountBits);
                data.Put("compression-type", CompressionName(h.CompressionType));
            }
            info.FormatSpecific = new QDict().Put("type", "qcow2").Put("data", data);
        }
        if (img.BackingFileName is { Length: > 0 } b)
        {
            info.BackingFilename = b;
            info.FullBackingFilename = BackingPath.Resolve(filename, b);
            if (!string.IsNullOrEmpty(img.BackingFormat))
                info.BackingFilenameFormat = img.BackingFormat;
        }
        foreach (var ext in Extensions)
            await ext(img, info, ct);
        return info;
    }

    public static string CompressionName(CompressionType t) => t == CompressionType.Zstd ? "zstd" : "zlib";

    /// <summary>The QAPI ImageInfo object (fields inserted in QAPI order; QDict order decides the output).</summary>
    public QDict ToQDict()
    {
        var d = new QDict();
        d.Put("filename", Filename);
        d.Put("format", Format);
        if (DirtyFlag is { } df)
            d.Put("dirty-flag", df);
        if (ActualSize is { } a)
            d.Put("actual-size", a);
        d.Put("virtual-size", VirtualSize);
        if (ClusterSize is { } cs)
            d.Put("cluster-size", cs);
        if (Encrypted is { } e)
            d.Put("encrypted", e);
        if (BackingFilename != null)
            d.Put("backing-filename", BackingFilename);
        if (FullBackingFilename != null)
            d.Put("full-backing-filename", FullBackingFilename);
        if (BackingFilenameFormat != null)
            d.Put("backing-filename-format", BackingFilenameFormat);
        if (Snapshots != null)
            d.Put("snapshots", Snapshots);
        if (FormatSpecific != null)
            d.Put("format-specific", FormatSpecific);
        return d;
    }

    /// <summary>bdrv_image_info_dump.</summary>
    public void DumpHuman(StringBuilder sb)
    {
        string dsize = ActualSize is { } a ? Sizes.SizeToStr((ulong)a) : "unavailable";
        sb.Append(CultureInfo.InvariantCulture,
            $"image: {Filename}\nfile format: {Format}\nvirtual size: {Sizes.SizeToStr((ulong)VirtualSize)} ({VirtualSize} bytes)\ndisk size: {dsize}\n");
        if (Encrypted == true)
            sb.Append("encrypted: yes\n");
        if (ClusterSize is { } cs)
            sb.Append(CultureInfo.InvariantCulture, $"cluster_size: {cs}\n");
        if (DirtyFlag == true)
            sb.Append("cleanly shut down: no\n");
        if (BackingFilename != null)
        {
            sb.Append("backing file: ").Append(BackingFilename);
            if (FullBackingFilename == null)
                sb.Append(" (cannot determine actual path)");
            else if (FullBackingFilename != BackingFilename)
                sb.Append(" (actual path: ").Append(FullBackingFilename).Append(')');
            sb.Append('\n');
            if (BackingFilenameFormat != null)
                sb.Append("backing file format: ").Append(BackingFilenameFormat).Append('\n');
        }
        if (Snapshots != null && SnapshotDumper != null)
        {
            sb.Append("Snapshot list:\n");
            SnapshotDumper(sb, Snapshots);
        }
        if (FormatSpecific != null)
        {
            sb.Append("Format specific information:\n");
            if (FormatSpecific.Get("data") is { } data)
                QJson.DumpHuman(sb, 1, data);
        }
    }
}
