using Strata.Images;
using Strata.Images.Format;
using Strata.Img.Cli;

namespace Strata.Img.Commands;

/// <summary>qemu-img compare [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2</summary>
public static class CompareCommand
{
    private const int IoBufSize = 2 * 1024 * 1024;
    private const int SectorSize = 512;

    private static readonly LongOption[] Longs =
    [
        new("help", ArgKind.None, 'h'),
        new("object", ArgKind.Required, 256),
        new("image-opts", ArgKind.None, 257),
        new("force-share", ArgKind.None, 'U'),
    ];

    public static async Task<int> RunAsync(string[] args)
    {
        string? fmt1 = null, fmt2 = null;
        bool progress = false, quiet = false, strict = false, forceShare = false;
        var (opts, pos) = GetOpt.Parse(args, ":hf:F:T:pqsU", Longs);
        foreach (var o in opts)
        {
            switch (o.Id)
            {
                case 'h': return Help.Show();
                case 'f': fmt1 = o.Value; break;
                case 'F': fmt2 = o.Value; break;
                case 'T': break;
                case 'p': progress = true; break;
                case 'q': quiet = true; break;
                case 's': strict = true; break;
                case 'U': forceShare = true; break;
                default: throw Io.ErrorExit($"option not supported: {o.Text}");
            }
        }
        if (quiet)
            progress = false;
        if (pos.Count != 2)
            throw Io.ErrorExit("Expecting two image file names");
        string filename1 = pos[0], filename2 = pos[1];
        var prog = new Progress(progress, 2.0f);
        try
        {
            return await CompareAsync(filename1, fmt1, filename2, fmt2, strict, quiet, prog, forceShare);
        }
        finally
        {
            prog.End();
        }
    }

    private static async Task<IImage> OpenOrExit2(string filename, string? fmt, bool forceShare)
    {
        try
        {
            return await ImageOpen.OpenAsync(filename, fmt, forceShare: forceShare);
        }
        catch (ExitException)
        {
            throw new ExitException(2);
        }
    }

    private static async Task<int> CompareAsync(string filename1, string? fmt1, string filename2, string? fmt2, bool strict, bool quiet, Progress prog, bool forceShare)
    {
        await using var img1 = await OpenOrExit2(filename1, fmt1, forceShare);
        await using var img2 = await OpenOrExit2(filename2, fmt2, forceShare);
        var chain1 = new ChainStatus(img1, filename1);
        var chain2 = new ChainStatus(img2, filename2);
        var buf1 = new byte[IoBufSize];
        var buf2 = new byte[IoBufSize];
        long total1 = ImageIo.VirtualSize(img1), total2 = ImageIo.VirtualSize(img2);
        long total = Math.Min(total1, total2);
        long progressBase = Math.Max(total1, total2);
        prog.Print(0, 100);

        if (strict && total1 != total2)
        {
            Io.Print(quiet, "Strict mode: Image size mismatch!\n");
            return 1;
        }

        long offset = 0;
        while (offset < total)
        {
            LayerStatus s1, s2;
            try
            {
                s1 = await chain1.AboveAsync(offset, total1 - offset);
            }
            catch (Exception e) when (e is ImageException or IOException)
            {
                Io.Error($"Sector allocation test failed for {filename1}");
                return 3;
            }
            try
            {
                s2 = await chain2.AboveAsync(offset, total2 - offset);
            }
            catch (Exception e) when (e is ImageException or IOException)
            {
                Io.Error($"Sector allocation test failed for {filename2}");
                return 3;
            }
            bool a1 = (s1.Flags & BdrvStatus.Allocated) != 0, a2 = (s2.Flags & BdrvStatus.Allocated) != 0;
            long chunk = Math.Min(s1.Length, s2.Length);
            if (strict && s1.Flags != s2.Flags)
            {
                Io.Print(quiet, $"Strict mode: Offset {offset} block status mismatch!\n");
                return 1;
            }
            if ((s1.Flags & BdrvStatus.Zero) != 0 && (s2.Flags & BdrvStatus.Zero) != 0)
            {
                // both read as zeroes
            }
            else if (a1 == a2)
            {
                if (a1)
                {
                    chunk = Math.Min(chunk, IoBufSize);
                    if (!await ReadAsync(img1, buf1, offset, (int)chunk, filename1) || !await ReadAsync(img2, buf2, offset, (int)chunk, filename2))
                        return 4;
                    bool differs = CompareBuffers(buf1, buf2, (int)chunk, out long pnum);
                    if (differs || pnum != chunk)
                    {
                        Io.Print(quiet, $"Content mismatch at offset {offset + (differs ? 0 : pnum)}!\n");
                        return 1;
                    }
                }
            }
            else
            {
                chunk = Math.Min(chunk, IoBufSize);
                int r = a1
                    ? await CheckEmptyAsync(img1, offset, (int)chunk, filename1, buf1, quiet)
                    : await CheckEmptyAsync(img2, offset, (int)chunk, filename2, buf1, quiet);
                if (r != 0)
                    return r;
            }
            offset += chunk;
            prog.Print((float)chunk / progressBase * 100, 100);
        }

        if (total1 != total2)
        {
            Io.Print(quiet, "Warning: Image size mismatch!\n");
            var (over, chainOver, nameOver) = total1 > total2 ? (img1, chain1, filename1) : (img2, chain2, filename2);
            while (offset < progressBase)
            {
                LayerStatus st;
                try
                {
                    st = await chainOver.AboveAsync(offset, progressBase - offset);
                }
                catch (Exception e) when (e is ImageException or IOException)
                {
                    Io.Error($"Sector allocation test failed for {nameOver}");
                    return 3;
                }
                long chunk = st.Length;
                if ((st.Flags & BdrvStatus.Allocated) != 0 && (st.Flags & BdrvStatus.Zero) == 0)
                {
                    chunk = Math.Min(chunk, IoBufSize);
                    int r = await CheckEmptyAsync(over, offset, (int)chunk, nameOver, buf1, quiet);
                    if (r != 0)
                        return r;
                }
                offset += chunk;
                prog.Print((float)chunk / progressBase * 100, 100);
            }
        }
        Io.Print(quiet, "Images are identical.\n");
        return 0;
    }

    private static async Task<bool> ReadAsync(IImage img, byte[] buf, long offset, int n, string filename)
    {
        try
        {
            await ImageIo.ReadAsync(img, buf.AsMemory(0, n), offset);
            return true;
        }
        catch (Exception e) when (e is ImageException or IOException)
        {
            Io.Error($"Error while reading offset {offset} of {filename}: {e.Message}");
            return false;
        }
    }

    /// <summary>qemu-img's compare_buffers with min = 0: whether the first sector differs, and how many bytes share its state.</summary>
    public static bool CompareBuffers(byte[] b1, byte[] b2, int bytes, out long pnum)
    {
        int i = Math.Min(bytes, SectorSize);
        bool res = !b1.AsSpan(0, i).SequenceEqual(b2.AsSpan(0, i));
        while (i < bytes)
        {
            int len = Math.Min(bytes - i, SectorSize);
            if (!b1.AsSpan(i, len).SequenceEqual(b2.AsSpan(i, len)) != res)
                break;
            i += len;
        }
        pnum = i;
        return res;
    }

    /// <summary>qemu-img's find_nonzero: the first 512-byte sector that is not all zeroes, or -1.</summary>
    public static long FindNonzero(ReadOnlySpan<byte> buf)
    {
        for (int i = 0; i < buf.Length; i += SectorSize)
            if (buf.Slice(i, Math.Min(SectorSize, buf.Length - i)).ContainsAnyExcept((byte)0))
                return i;
        return -1;
    }

    private static async Task<int> CheckEmptyAsync(IImage img, long offset, int bytes, string filename, byte[] buf, bool quiet)
    {
        if (!await ReadAsync(img, buf, offset, bytes, filename))
            return 4;
        long idx = FindNonzero(buf.AsSpan(0, bytes));
        if (idx >= 0)
        {
            Io.Print(quiet, $"Content mismatch at offset {offset + idx}!\n");
            return 1;
        }
        return 0;
    }
}
