using Strata.Images;
using Strata.Images.Format;
using Strata.Images.Qcow2;
using Strata.Images.Storage;
using Strata.Img.Cli;

namespace Strata.Img.Commands;

/// <summary>
/// qemu-img convert [-U] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt]
/// [-B backing_file [-F backing_fmt]] [-o options] [-S sparse_size] [-m num_coroutines] [-W] filename [filename2 [...]] output_filename
/// </summary>
/// <remarks>
/// Follows QEMU 7.2's img_convert: the sources' allocation decides what is copied (data), skipped (zeroes on a
/// target that starts zeroed, or ranges a target backing file provides) or written as zeroes; data is scanned for
/// zero runs of at least the sparse size; with -c every cluster is written compressed. Reads run ahead in parallel
/// (-m), writes go out in order (so the target's layout is that of qemu-img's default in-order mode).
/// </remarks>
public static class ConvertCommand
{
    private const int SectorSize = 512;
    private const int IoBufSectors = 2 * 1024 * 1024 / SectorSize;
    private const int MaxBufSectors = 32768;
    private const int MaxCoroutines = 16;

    private const int OptObject = 256, OptImageOpts = 257, OptTargetImageOpts = 258, OptSalvage = 259,
        OptTargetIsZero = 260, OptBitmaps = 261, OptSkipBroken = 262;

    private static readonly LongOption[] Longs =
    [
        new("help", ArgKind.None, 'h'),
        new("object", ArgKind.Required, OptObject),
        new("image-opts", ArgKind.None, OptImageOpts),
        new("force-share", ArgKind.None, 'U'),
        new("target-image-opts", ArgKind.None, OptTargetImageOpts),
        new("salvage", ArgKind.None, OptSalvage),
        new("target-is-zero", ArgKind.None, OptTargetIsZero),
        new("bitmaps", ArgKind.None, OptBitmaps),
        new("skip-broken-bitmaps", ArgKind.None, OptSkipBroken),
    ];

    private enum BlkStatus { Data, Zero, BackingFile }

    private sealed class State
    {
        public required List<IImage> Src;
        public required List<ChainStatus> SrcStatus;
        public required long[] SrcSectors;
        public required int[] SrcAlignment;
        public long TotalSectors;
        public int MinSparse = 8;
        public int BufSectors = IoBufSectors;
        public bool Compressed;
        public bool TargetHasBacking;
        public bool HasZeroInit;
        public long TargetBackingSectors = -1;
        public int ClusterSectors;
        public int Alignment;
        public int NumCoroutines = 8;
        public long SectorNextStatus;
        public BlkStatus Status;
        public IImage Target = null!;
    }

    public static async Task<int> RunAsync(string[] args)
    {
        string? fmt = null, outFmt = null, outBaseimg = null, backingFmt = null, options = null;
        bool progress = false, quiet = false, skipCreate = false, explicitMinSparse = false, targetIsZero = false, copyRange = false;
        bool tgtImageOpts = false, bitmaps = false, skipBroken = false;
        SnapshotParam? snapshot = null;
        IImage? snapshotBase = null;
        int minSparse = 8, numCoroutines = 8;
        var (opts, pos) = GetOpt.Parse(args, ":hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:", Longs);
        bool compressed = false, forceShare = false;
        foreach (var o in opts)
        {
            switch (o.Id)
            {
                case 'h': return Help.Show();
                case 'f': fmt = o.Value; break;
                case 'O': outFmt = o.Value; break;
                case 'B': outBaseimg = o.Value; break;
                case 'C': copyRange = true; break;
                case 'c': compressed = true; break;
                case 'F': backingFmt = o.Value; break;
                case 'o':
                    if (!QemuOpts.IsValidOptionList(o.Value!))
                        throw Io.Fail($"Invalid option list: {o.Value}");
                    options = options == null ? o.Value : options + "," + o.Value;
                    break;
                case 'l': snapshot = SnapshotParam.Parse(o.Value!); break;
                case 'S':
                {
                    var err = Sizes.Strtosz(o.Value!, out ulong sval, out _);
                    if (err != Sizes.StrtoszError.None || sval > long.MaxValue)
                    {
                        // cvtnum's own message first
                        Sizes.CvtNum("buffer size for sparse output", o.Value!);
                    }
                    if (sval % SectorSize != 0 || sval / SectorSize > MaxBufSectors)
                        throw Io.Fail($"Invalid buffer size for sparse output specified. Valid sizes are multiples of {SectorSize} up to {MaxBufSectors * SectorSize}. Select 0 to disable sparse detection (fully allocates output).");
                    minSparse = (int)(sval / SectorSize);
                    explicitMinSparse = true;
                    break;
                }
                case 'p': progress = true; break;
                case 't': case 'T': break;
                case 'q': quiet = true; break;
                case 'n': skipCreate = true; break;
                case 'm':
                    if (!QemuOpts.TryParseU64(o.Value!, out ulong m) || m < 1 || m > MaxCoroutines)
                        throw Io.Fail($"Invalid number of coroutines. Allowed number of coroutines is between 1 and {MaxCoroutines}");
                    numCoroutines = (int)m;
                    break;
                case 'W': break; // writes stay in order; that is always a valid schedule
                case 'U': forceShare = true; break;
                case 'r': Sizes.CvtNum("rate limit", o.Value!); break;
                case OptObject: break;
                case OptImageOpts: throw Io.Fail("--image-opts is not supported");
                case OptSalvage: throw Io.Fail("--salvage is not supported");
                case OptTargetImageOpts: tgtImageOpts = true; break;
                case OptTargetIsZero: targetIsZero = true; break;
                case OptBitmaps: bitmaps = true; break;
                case OptSkipBroken: skipBroken = true; break;
            }
        }
        if (outFmt == null && !tgtImageOpts)
            outFmt = "raw";
        if (skipBroken && !bitmaps)
            throw Io.Fail("Use of --skip-broken-bitmaps requires --bitmaps");
        if (compressed && copyRange)
            throw Io.Fail("Cannot enable copy offloading when -c is used");
        if (explicitMinSparse && copyRange)
            throw Io.Fail("Cannot enable copy offloading when -S is used");
        if (tgtImageOpts && !skipCreate)
            throw Io.Fail("--target-image-opts requires use of -n flag");
        if (skipCreate && options != null)
            throw Io.Fail("-o has no effect when skipping image creation");
        if (targetIsZero && !skipCreate)
            throw Io.Fail("--target-is-zero requires use of -n flag");
        int srcNum = pos.Count - 1;
        string? outFilename = srcNum >= 1 ? pos[^1] : null;
        if (QemuOpts.HasHelpOption(options))
        {
            if (outFmt != null)
                return QemuOpts.PrintHelp(outFilename, outFmt);
            throw Io.Fail("Option help requires a format be specified");
        }
        if (srcNum < 1)
            throw Io.Fail("Must specify image file name");
        if (quiet)
            progress = false;
        var prog = new Progress(progress, 1.0f);
        prog.Print(0, 100);

        var sources = new List<IImage>();
        int rc = 1;
        try
        {
            rc = await ConvertAsync();
        }
        finally
        {
            foreach (var s in sources)
                await s.DisposeAsync();
            if (snapshotBase != null)
                await snapshotBase.DisposeAsync();
            if (rc == 0)
                prog.Print(100, 0);
            prog.End();
        }
        return rc;

        async Task<int> ConvertAsync()
        {
            var st = new State
            {
                Src = sources,
                SrcStatus = [],
                SrcSectors = new long[srcNum],
                SrcAlignment = new int[srcNum],
                MinSparse = minSparse,
                Compressed = compressed,
                HasZeroInit = targetIsZero,
                NumCoroutines = numCoroutines,
            };
            for (int i = 0; i < srcNum; i++)
            {
                IImage img;
                try
                {
                    img = await ImageOpen.OpenAsync(pos[i], fmt, forceShare: forceShare, noShare: true);
                }
                catch (ExitException)
                {
                    return 1;
                }
                sources.Add(img);
                st.SrcStatus.Add(new ChainStatus(img, pos[i]));
                st.SrcSectors[i] = ImageIo.VirtualSize(img) / SectorSize;
                st.SrcAlignment[i] = img is Qcow2Image q ? Math.Max(1, q.ClusterSize / SectorSize) : 1;
                st.TotalSectors += st.SrcSectors[i];
            }
            if (snapshot != null)
            {
                if (snapshot.IdOrName != null && srcNum > 1)
                    throw Io.Fail("No support for concatenating multiple snapshot");
                // The snapshot's view reads in place of the first source (QEMU's bdrv_snapshot_load_tmp).
                snapshotBase = sources[0];
                sources[0] = await snapshot.LoadAsync(snapshotBase);
                st.SrcStatus[0] = new ChainStatus(sources[0], pos[0]);
            }

            QemuOpts? qopts = null;
            if (!skipCreate)
            {
                try
                {
                    qopts = ImageCreate.ParseOptions(outFmt!, options);
                }
                catch (CreateException e)
                {
                    Io.Error(e.Message, e.Hint);
                    return 1;
                }
                qopts.SetNumber("size", st.TotalSectors * SectorSize);
                if (outBaseimg != null)
                {
                    if (outFmt != "qcow2")
                    {
                        Io.Error($"Backing file not supported for file format '{outFmt}'");
                        return 1;
                    }
                    qopts.Set("backing_file", outBaseimg);
                }
                if (backingFmt != null)
                {
                    if (outFmt != "qcow2")
                    {
                        Io.Error($"Backing file format not supported for file format '{outFmt}'");
                        return 1;
                    }
                    qopts.Set("backing_fmt", backingFmt);
                }
            }
            string? baseParam = qopts?.Get("backing_file");
            if (baseParam != null)
                outBaseimg = baseParam;
            st.TargetHasBacking = outBaseimg != null;
            if (st.HasZeroInit && st.TargetHasBacking)
            {
                Io.Error("Cannot use --target-is-zero when the destination image has a backing file");
                return 1;
            }
            if (srcNum > 1 && outBaseimg != null)
            {
                Io.Error("Having a backing file for the target makes no sense when concatenating multiple input images");
                return 1;
            }
            if (baseParam != null && qopts!.Get("backing_fmt") == null)
            {
                Io.Error("Use of backing file requires explicit backing format");
                return 1;
            }
            if (st.Compressed && qopts != null)
            {
                if (outFmt != "qcow2")
                {
                    Io.Error("Compression not supported for this file format");
                    return 1;
                }
                if (qopts.GetBool("encryption", false) || qopts.Get("encrypt.format") != null)
                {
                    Io.Error("Compression and encryption not supported at the same time");
                    return 1;
                }
                if (qopts.Get("preallocation") is { } pre && pre != "off")
                {
                    Io.Error("Compression and preallocation not supported at the same time");
                    return 1;
                }
            }

            if (bitmaps)
            {
                if (srcNum > 1)
                {
                    Io.Error("Copying bitmaps only possible with single source");
                    return 1;
                }
                if (!BitmapCommand.CheckConvertSource(sources[0], skipBroken))
                    return 1;
            }

            IImage target;
            if (!skipCreate)
            {
                try
                {
                    target = await CreateTargetAsync(outFilename!, outFmt!, qopts!);
                }
                catch (CreateException e)
                {
                    Io.Error($"{outFilename}: error while converting {outFmt}: {e.Message}", e.Hint);
                    return 1;
                }
                catch (ExitException)
                {
                    return 1;
                }
            }
            else
            {
                try
                {
                    target = await ImageOpen.OpenAsync(outFilename!, outFmt, writable: true);
                }
                catch (ExitException)
                {
                    return 1;
                }
            }
            await using (target)
            {
                st.Target = target;
                if (bitmaps && target is not Qcow2Image { Header.Version: >= 3 })
                {
                    Io.Error($"Format driver '{target.FormatName}' does not support bitmaps");
                    return 1;
                }
                if (st.Compressed && target is not Qcow2Image)
                {
                    Io.Error("Compression not supported for this file format");
                    return 1;
                }
                st.Alignment = Math.Max(PowTwoFloor(st.MinSparse), 1);
                if (skipCreate)
                {
                    long outSectors = ImageIo.VirtualSize(target) / SectorSize;
                    if (outSectors < st.TotalSectors)
                    {
                        Io.Error("output file is smaller than input file");
                        return 1;
                    }
                }
                if (st.TargetHasBacking && !skipCreate && target.Backing != null)
                    st.TargetBackingSectors = ImageIo.VirtualSize(target.Backing) / SectorSize;
                st.ClusterSectors = target is Qcow2Image tq ? tq.ClusterSize / SectorSize : 0;
                if (st.Compressed && st.ClusterSectors <= 0)
                {
                    Io.Error("could not get block driver info");
                    return 1;
                }
                try
                {
                    await DoCopyAsync(st, !skipCreate, prog);
                    await target.FlushAsync();
                    if (bitmaps && !await BitmapCommand.CopyForConvertAsync(sources[0], (Qcow2Image)target, skipBroken))
                        return 1;
                }
                catch (Exception e) when (e is ImageException or IOException)
                {
                    Io.Error($"error while writing at byte ?: {e.Message}");
                    return 1;
                }
                catch (ConvertFailure f)
                {
                    Io.Error(f.Message);
                    return 1;
                }
            }
            return 0;
        }
    }

    private sealed class ConvertFailure(string message) : Exception(message);

    private static int PowTwoFloor(int v) => v <= 0 ? 0 : 1 << (31 - System.Numerics.BitOperations.LeadingZeroCount((uint)v));

    /// <summary>bdrv_create for the target (no "Formatting" line), then opened read-write with its backing chain.</summary>
    private static async Task<IImage> CreateTargetAsync(string filename, string fmt, QemuOpts o)
    {
        if (fmt == "qcow2")
        {
            var co = ImageCreate.Qcow2Options(o);
            var img = await ImageCreate.CreateQcow2ImageAsync(filename, co, default);
            if (co.BackingFile == null)
                return img;
            await img.DisposeAsync();
        }
        else
        {
            var file = await ImageCreate.CreateRawFileAsync(filename, o, default);
            await file.DisposeAsync();
        }
        return await ImageOpen.OpenAsync(filename, fmt, writable: true);
    }

    private static (int Index, long Offset) SelectPart(State s, long sectorNum)
    {
        long start = 0;
        for (int i = 0; i < s.SrcSectors.Length; i++)
        {
            if (sectorNum < start + s.SrcSectors[i])
                return (i, start);
            start += s.SrcSectors[i];
        }
        return (s.SrcSectors.Length - 1, start - s.SrcSectors[^1]);
    }

    /// <summary>convert_iteration_sectors.</summary>
    private static async Task<int> IterationSectorsAsync(State s, long sectorNum)
    {
        var (cur, curOffset) = SelectPart(s, sectorNum);
        long n = Math.Min(s.TotalSectors - sectorNum, int.MaxValue / SectorSize);
        bool postBackingZero = false;
        if (s.TargetBackingSectors >= 0)
        {
            if (sectorNum >= s.TargetBackingSectors)
                postBackingZero = true;
            else if (sectorNum + n > s.TargetBackingSectors)
                n = s.TargetBackingSectors - sectorNum;
        }
        if (s.SectorNextStatus <= sectorNum)
        {
            long offset = (sectorNum - curOffset) * SectorSize;
            var chain = s.SrcStatus[cur];
            LayerStatus ret;
            long count;
            do
            {
                count = n * SectorSize;
                try
                {
                    ret = s.TargetHasBacking ? await chain.LayerAsync(0, offset, count) : await chain.AboveAsync(offset, count);
                }
                catch (Exception e) when (e is ImageException or IOException)
                {
                    throw new ConvertFailure($"error while reading block status at offset {offset}: {e.Message}");
                }
                count = ret.Length;
            } while (count < SectorSize && count == 0);
            n = (count + SectorSize - 1) / SectorSize;
            long tail = (sectorNum - curOffset + n) % s.SrcAlignment[cur];
            if (n > tail)
                n -= tail;
            if ((ret.Flags & BdrvStatus.Zero) != 0)
                s.Status = postBackingZero ? BlkStatus.BackingFile : BlkStatus.Zero;
            else if ((ret.Flags & BdrvStatus.Data) != 0)
                s.Status = BlkStatus.Data;
            else
                s.Status = s.TargetHasBacking ? BlkStatus.BackingFile : BlkStatus.Data;
            s.SectorNextStatus = sectorNum + n;
        }
        n = Math.Min(n, s.SectorNextStatus - sectorNum);
        if (s.Status == BlkStatus.Data)
            n = Math.Min(n, s.BufSectors);
        if (s.Compressed)
        {
            if (n < s.ClusterSectors)
            {
                n = Math.Min(s.ClusterSectors, s.TotalSectors - sectorNum);
                s.Status = BlkStatus.Data;
            }
            else
                n = n / s.ClusterSectors * s.ClusterSectors;
        }
        return (int)n;
    }

    private readonly record struct Chunk(long SectorNum, int Sectors, BlkStatus Status, Task<byte[]?> Data);

    private static async Task DoCopyAsync(State s, bool targetIsNew, Progress prog)
    {
        if (!s.HasZeroInit && targetIsNew && s.MinSparse > 0 && !s.TargetHasBacking)
            s.HasZeroInit = HasZeroInit(s.Target);
        if (s.Compressed)
            s.BufSectors = s.ClusterSectors;

        long allocatedSectors = 0;
        if (prog.Enabled)
        {
            for (long sn = 0; sn < s.TotalSectors;)
            {
                int n = await IterationSectorsAsync(s, sn);
                if (s.Status == BlkStatus.Data || (s.MinSparse == 0 && s.Status == BlkStatus.Zero))
                    allocatedSectors += n;
                sn += n;
            }
            s.SectorNextStatus = 0;
        }

        var window = new Queue<Chunk>();
        long sectorNum = 0, allocatedDone = 0;
        while (sectorNum < s.TotalSectors || window.Count > 0)
        {
            while (sectorNum < s.TotalSectors && window.Count < s.NumCoroutines)
            {
                int n = await IterationSectorsAsync(s, sectorNum);
                var status = s.Status;
                Task<byte[]?> data;
                if (status == BlkStatus.Data || (s.MinSparse == 0 && status == BlkStatus.Zero))
                {
                    if (status == BlkStatus.Data)
                        data = ReadAsync(s, sectorNum, n);
                    else
                    {
                        var zeros = System.Buffers.ArrayPool<byte>.Shared.Rent(n * SectorSize);
                        Array.Clear(zeros, 0, n * SectorSize);
                        data = Task.FromResult<byte[]?>(zeros);
                    }
                    status = BlkStatus.Data;
                }
                else
                    data = Task.FromResult<byte[]?>(null);
                window.Enqueue(new Chunk(sectorNum, n, status, data));
                sectorNum += n;
            }
            var c = window.Dequeue();
            var buf = await c.Data;
            if (buf != null)
            {
                allocatedDone += c.Sectors;
                if (allocatedSectors > 0)
                    prog.Print(100.0f * allocatedDone / allocatedSectors, 0);
            }
            await WriteAsync(s, c.SectorNum, c.Sectors, buf, c.Status);
            if (buf != null)
                System.Buffers.ArrayPool<byte>.Shared.Return(buf);
        }
        if (s.Compressed && s.Target is Qcow2Image cq)
            await cq.WriteCompressedAsync(ReadOnlyMemory<byte>.Empty, 0);
    }

    /// <summary>bdrv_has_zero_init: qcow2 and raw on a regular file start out reading as zeroes (preallocated or not).</summary>
    private static bool HasZeroInit(IImage target) => target.FormatName is "qcow2" or "raw";

    /// <summary>convert_co_read: the sources concatenated.</summary>
    private static async Task<byte[]?> ReadAsync(State s, long sectorNum, int nbSectors)
    {
        // Pooled: chunks are megabytes, and fresh arrays of that size would each go through the large object heap.
        var buf = System.Buffers.ArrayPool<byte>.Shared.Rent(nbSectors * SectorSize);
        int done = 0;
        while (nbSectors > 0)
        {
            var (cur, curOffset) = SelectPart(s, sectorNum);
            long offset = (sectorNum - curOffset) * SectorSize;
            int n = (int)Math.Min(nbSectors, s.SrcSectors[cur] - (sectorNum - curOffset));
            try
            {
                await ImageIo.ReadAsync(s.Src[cur], buf.AsMemory(done * SectorSize, n * SectorSize), offset);
            }
            catch (Exception e) when (e is ImageException or IOException)
            {
                throw new ConvertFailure($"error while reading at byte {offset}: {e.Message}");
            }
            sectorNum += n;
            nbSectors -= n;
            done += n;
        }
        return buf;
    }

    /// <summary>convert_co_write.</summary>
    private static async Task WriteAsync(State s, long sectorNum, int nbSectors, byte[]? buf, BlkStatus status)
    {
        int bufPos = 0;
        while (nbSectors > 0)
        {
            int n = nbSectors;
            switch (status)
            {
                case BlkStatus.BackingFile:
                    break;
                case BlkStatus.Data:
                {
                    var span = buf.AsSpan(bufPos * SectorSize, n * SectorSize);
                    bool write = s.MinSparse == 0
                        || (!s.Compressed && IsAllocatedSectorsMin(buf!, bufPos, n, out n, s.MinSparse, sectorNum, s.Alignment))
                        || (s.Compressed && span.ContainsAnyExcept((byte)0));
                    if (write)
                    {
                        var data = buf.AsMemory(bufPos * SectorSize, n * SectorSize);
                        long off = sectorNum * SectorSize;
                        try
                        {
                            if (s.Compressed && s.Target is Qcow2Image q)
                                await WriteCompressedAsync(q, data, off);
                            else
                                await s.Target.WriteAsync(data, off);
                        }
                        catch (Exception e) when (e is ImageException or IOException)
                        {
                            throw new ConvertFailure($"error while writing at byte {off}: {e.Message}");
                        }
                        break;
                    }
                    goto case BlkStatus.Zero;
                }
                case BlkStatus.Zero:
                    if (s.HasZeroInit)
                        break;
                    try
                    {
                        await s.Target.WriteZeroesAsync(sectorNum * SectorSize, (long)n * SectorSize, ZeroFlags.MayUnmap);
                    }
                    catch (Exception e) when (e is ImageException or IOException)
                    {
                        throw new ConvertFailure($"error while writing at byte {sectorNum * SectorSize}: {e.Message}");
                    }
                    break;
            }
            sectorNum += n;
            nbSectors -= n;
            bufPos += n;
        }
    }

    /// <summary>QEMU's qcow2_co_pwritev_compressed_part: cluster by cluster.</summary>
    private static async Task WriteCompressedAsync(Qcow2Image q, ReadOnlyMemory<byte> data, long offset)
    {
        int cs = q.ClusterSize;
        while (data.Length > 0)
        {
            int n = Math.Min(cs, data.Length);
            await q.WriteCompressedAsync(data[..n], offset);
            data = data[n..];
            offset += n;
        }
    }

    private static bool SectorIsZero(byte[] buf, int sector) => !buf.AsSpan(sector * SectorSize, SectorSize).ContainsAnyExcept((byte)0);

    /// <summary>is_allocated_sectors: whether the first sector has data, and how many sectors share its state (end aligned).</summary>
    private static bool IsAllocatedSectors(byte[] buf, int first, int n, out int pnum, long sectorNum, int alignment)
    {
        if (n <= 0)
        {
            pnum = 0;
            return false;
        }
        bool isZero = SectorIsZero(buf, first);
        int i;
        for (i = 1; i < n; i++)
            if (isZero != SectorIsZero(buf, first + i))
                break;
        if (i == n)
        {
            pnum = i;
            return !isZero;
        }
        long tail = (sectorNum + i) & (alignment - 1);
        if (tail != 0)
        {
            if (isZero && i <= tail)
                isZero = false;
            if (!isZero)
            {
                i += (int)(alignment - tail);
                i = Math.Min(i, n);
            }
            else
                i -= (int)tail;
        }
        pnum = i;
        return !isZero;
    }

    /// <summary>is_allocated_sectors_min: data, ignoring zero runs shorter than <paramref name="min"/> sectors.</summary>
    private static bool IsAllocatedSectorsMin(byte[] buf, int first, int n, out int pnum, int min, long sectorNum, int alignment)
    {
        if (n < min)
            min = n;
        bool ret = IsAllocatedSectors(buf, first, n, out pnum, sectorNum, alignment);
        if (!ret)
            return ret;
        int numUsed = pnum;
        first += pnum;
        n -= pnum;
        sectorNum += pnum;
        int numChecked = numUsed;
        while (n > 0)
        {
            ret = IsAllocatedSectors(buf, first, n, out int p, sectorNum, alignment);
            first += p;
            n -= p;
            sectorNum += p;
            numChecked += p;
            if (ret)
                numUsed = numChecked;
            else if (p >= min)
                break;
        }
        pnum = numUsed;
        return true;
    }
}
