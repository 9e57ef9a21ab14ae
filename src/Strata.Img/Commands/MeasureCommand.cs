using System.Numerics;
using Strata.Images;
using Strata.Images.Format;
using Strata.Images.Qcow2;
using Strata.Img.Cli;

namespace Strata.Img.Commands;

/// <summary>qemu-img measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [-f fmt] filename]</summary>
public static class MeasureCommand
{
    private const int OptImageOpts = 256, OptObject = 257, OptOutput = 258, OptSize = 259;

    private static readonly LongOption[] Longs =
    [
        new("help", ArgKind.None, 'h'),
        new("image-opts", ArgKind.None, OptImageOpts),
        new("object", ArgKind.Required, OptObject),
        new("output", ArgKind.Required, OptOutput),
        new("size", ArgKind.Required, OptSize),
        new("force-share", ArgKind.None, 'U'),
    ];

    public static async Task<int> RunAsync(string[] args)
    {
        string? fmt = null, options = null;
        string outFmt = "raw";
        bool json = false, forceShare = false;
        long imgSize = -1;
        SnapshotParam? snapshot = null;
        IImage? snapshotBase = null;
        var (opts, pos) = GetOpt.Parse(args, "hf:O:o:l:U", Longs, gnuName: "measure");
        foreach (var o in opts)
        {
            switch (o.Id)
            {
                case 'h': return Help.Show();
                case 'f': fmt = o.Value; break;
                case 'O': outFmt = o.Value!; break;
                case 'o':
                    if (!QemuOpts.IsValidOptionList(o.Value!))
                        throw Io.Fail($"Invalid option list: {o.Value}");
                    options = options == null ? o.Value : options + "," + o.Value;
                    break;
                case 'l': snapshot = SnapshotParam.Parse(o.Value!); break;
                case 'U': forceShare = true; break;
                case OptOutput: json = Io.ParseOutputFormat(o.Value); break; // checked at once, as img_measure does
                case OptSize: imgSize = Sizes.CvtNum("image size", o.Value!); break;
            }
        }
        if (pos.Count > 1)
            throw Io.Fail("At most one filename argument is allowed.");
        string? filename = pos.Count == 1 ? pos[0] : null;
        if (filename == null && (fmt != null || snapshot != null))
            throw Io.Fail("--image-opts, -f, and -l require a filename argument.");
        if (filename != null && imgSize != -1)
            throw Io.Fail("--size N cannot be used together with a filename.");
        if (filename == null && imgSize == -1)
            throw Io.Fail("Either --size N or one filename must be specified.");

        IImage? img = filename != null ? await ImageOpen.OpenAsync(filename, fmt, forceShare: forceShare) : null;
        try
        {
            if (snapshot != null && img != null)
            {
                snapshotBase = img;
                img = null;
                img = await snapshot.LoadAsync(snapshotBase);
            }
            if (OptLists.ForFormat(outFmt) == null)
                throw Io.Fail($"Unknown file format '{outFmt}'");
            QemuOpts qopts;
            try
            {
                qopts = ImageCreate.ParseOptions(outFmt, options);
            }
            catch (CreateException e)
            {
                Io.Error(e.Message, e.Hint);
                throw Io.Fail($"Invalid options for file format '{outFmt}'");
            }
            if (imgSize != -1)
                qopts.SetNumber("size", imgSize);

            Qcow2MeasureResult r;
            try
            {
                r = outFmt == "qcow2" ? await MeasureQcow2Async(qopts, img, filename) : MeasureRaw(qopts, img);
            }
            catch (ImageException e)
            {
                throw Io.Fail(e.Message);
            }
            if (!json)
            {
                Io.Out.Write($"required size: {r.Required}\nfully allocated size: {r.FullyAllocated}\n");
                if (r.Bitmaps is { } b)
                    Io.Out.Write($"bitmaps size: {b}\n");
            }
            else
            {
                var d = new QDict();
                d.Put("required", r.Required);
                d.Put("fully-allocated", r.FullyAllocated);
                if (r.Bitmaps is { } b)
                    d.Put("bitmaps", b);
                Io.Out.Write(QJson.ToPrettyJson(d) + "\n");
            }
            return 0;
        }
        finally
        {
            if (img != null)
                await img.DisposeAsync();
            if (snapshotBase != null)
                await snapshotBase.DisposeAsync();
        }
    }

    private static Qcow2MeasureResult MeasureRaw(QemuOpts o, IImage? img)
    {
        long required = img != null ? ImageIo.VirtualSize(img) : (long)(((o.GetNumber("size") ?? 0) + 511) & ~511UL);
        return new Qcow2MeasureResult(required, required, null);
    }

    /// <summary>Hook for the persistent bitmaps of a source image (their size in a target of the cluster size); 0 when unset.</summary>
    public static Func<IImage, int, CancellationToken, ValueTask<long>>? BitmapsSize { get; set; }

    private static async Task<Qcow2MeasureResult> MeasureQcow2Async(QemuOpts o, IImage? img, string? filename)
    {
        bool extL2 = o.GetBool("extended_l2", false);
        ulong cs = o.GetNumber("cluster_size") ?? 65536;
        int cbits = cs == 0 ? 32 : BitOperations.TrailingZeroCount(cs);
        if (cbits < 9 || cbits > 21 || (1UL << cbits) != cs)
            throw new ImageException("Cluster size must be a power of two between 512 and 2048k");
        if (extL2 && cs < 16384)
            throw new ImageException("Extended L2 entries are only supported with cluster sizes of at least 16384 bytes");
        string? compat = o.Get("compat");
        int version = compat switch
        {
            null or "1.1" => 3,
            "0.10" => 2,
            _ => throw new ImageException($"Invalid compatibility level: '{compat}'"),
        };
        ulong rb = o.GetNumber("refcount_bits") ?? 16;
        if (rb > 64 || !BitOperations.IsPow2(rb))
            throw new ImageException("Refcount width must be a power of two and may not exceed 64 bits");
        if (version < 3 && rb != 16)
            throw new ImageException("Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)");
        string? p = o.Get("preallocation");
        var prealloc = ImageCreate.ParsePrealloc(p) ?? throw new ImageException($"invalid parameter value: {p}");
        bool hasBacking = o.Get("backing_file") != null;
        if (o.Get("encrypt.format") != null || o.GetBool("encryption", false))
            throw new ImageException("Encrypted images are not supported");

        var m = new Qcow2Measure((int)cs, (int)rb, extL2);
        long virtualSize = (long)(o.GetNumber("size") ?? 0);
        m.CheckSize(virtualSize);
        long? bitmaps = null;
        if (img != null)
        {
            long ssize = ImageIo.VirtualSize(img);
            virtualSize = ssize;
            if (hasBacking)
                m.SetRequiredData((ssize + (long)cs - 1) / (long)cs * (long)cs);
            else
            {
                var chain = new ChainStatus(img, filename!);
                long pnum;
                for (long offset = 0; offset < ssize; offset += pnum)
                {
                    var st = await chain.AboveAsync(offset, ssize - offset);
                    pnum = st.Length;
                    if ((st.Flags & BdrvStatus.Zero) != 0)
                        continue;
                    if ((st.Flags & (BdrvStatus.Data | BdrvStatus.Allocated)) == (BdrvStatus.Data | BdrvStatus.Allocated))
                        pnum = m.AddData(offset, pnum);
                }
            }
            if (version >= 3 && img is Qcow2Image q && q.Header.Version >= 3)
                bitmaps = BitmapsSize != null ? await BitmapsSize(img, (int)cs, default) : 0;
        }
        return m.Result(virtualSize, prealloc, bitmaps);
    }
}
