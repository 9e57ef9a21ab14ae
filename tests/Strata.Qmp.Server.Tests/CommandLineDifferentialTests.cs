using System.Diagnostics;
using Xunit;

namespace Strata.Qmp.Server.Tests;

/// <summary>
/// Malformed and refused command lines, differential against qemu-storage-daemon 7.2: both exit with the same code and
/// the same one-line error (the program's name aside), in the order qsd checks things.
/// </summary>
public sealed partial class CommandLineDifferentialTests
{
    private static readonly string[][] Lines =
    [
        ["--blockdev", "driver=file,node-name=f0"],
        ["--blockdev", "driver=file,filename=a.qcow2"],
        ["--blockdev", "driver=file,node-name=f0,filename=a.qcow2,read-only=maybe"],
        ["--blockdev", "driver=file,node-name=f0,filename=a.qcow2,cache.direct=x"],
        ["--blockdev", "driver=file,node-name=f0,filename=a.qcow2,bogus=1"],
        ["--blockdev", "driver=file,node-name=f0,filename=a.qcow2,aio=nope"],
        ["--blockdev", "driver=file,node-name=f0,filename=a.qcow2,aio-max-batch=abc"],
        ["--blockdev", "driver=file,node-name=f0,filename=a.qcow2,locking=maybe"],
        ["--blockdev", "driver=nosuch,node-name=x"],
        ["--blockdev", "driver=qcow2,node-name=d0,file.driver=file"],
        ["--blockdev", "driver=qcow2,node-name=d0,file=nonode"],
        ["--blockdev", "driver=qcow2,node-name=d0,file.driver=file,file.filename=a.qcow2,l2-cache-size=abc"],
        ["--blockdev", "driver=qcow2,node-name=d0,file.driver=file,file.filename=a.qcow2,backing=nonode"],
        ["--blockdev", "driver=qcow2,node-name=d0,file.driver=file,file.filename=a.qcow2,file.bogus=1"],
        ["--blockdev", "driver=null-co,node-name=n0,size=1x"],
        ["--blockdev", "driver=null-co,node-name=0bad"],
        ["--blockdev", "node-name=n0"],
        ["--blockdev", "driver=null-co,node-name=n0,,x=1"],
        ["--blockdev", "{\"driver\":\"null-co\",\"node-name\":\"n0\",\"size\":\"1\"}"],
        ["--blockdev", "{\"driver\":\"null-co\"}"],
        ["--blockdev", "driver=null-co,node-name=n0,driver=file"],
        ["--blockdev", "driver=blkdebug,node-name=b0,image.driver=null-co,inject-error.0.event=nope"],
        ["--blockdev", "driver=blkdebug,node-name=b0,image.driver=null-co,inject-error.1.event=read_aio"],
        ["--blockdev", "driver=blkdebug,node-name=b0,image.driver=null-co,inject-error.0.event=read_aio,inject-error.2.event=read_aio"],
        ["--blockdev", "driver=null-co,node-name=n0", "--blockdev", "driver=null-co,node-name=n0"],
        ["--blockdev"], ["--nosuch"], ["-x"],
        ["--export", "type=nbd,id=e,node-name=x"], ["--export", "type=nbd"],
        ["--nbd-server", "addr.type=unix"],
        ["--nbd-server", "addr.type=inet,addr.host=127.0.0.1"],
        ["--nbd-server", "addr.type=inet,addr.host=127.0.0.1,addr.port=x"],
        ["--nbd-server", "addr.type=unix,addr.path=$D/n.sock,max-connections=-1"],
        ["--nbd-server", "addr.type=unix,addr.path=$D/n.sock,max-connections=abc"],
        ["--nbd-server", "addr.type=unix,addr.path=$D/n.sock,max-connections=4294967296"],
        ["--chardev", "socket,id=m"], ["--chardev", "socket,path=$D/x.sock"], ["--chardev", "socket,id=m,host=127.0.0.1"],
        ["--chardev", "socket,id=m,path=$D/m.sock,server=maybe"],
        ["--monitor", "chardev=nosuch"], ["--monitor", "mode=bogus,chardev=m"],
        ["--chardev", "socket,id=m,path=$D/m.sock,server=on,wait=off", "--monitor", "mode=readline,chardev=m"],
        ["--object", "nosuch,id=x"], ["--object", "iothread"], ["--object", "id=x"],
        ["--pidfile"], ["--pidfile", "$D/no/such/dir/p.pid"],
        ["-h", "--nosuch"], ["--version", "x"], ["--trace"],
        ["--blockdev", "driver=null-co,node-name=n0", "--nbd-server", "addr.type=unix,addr.path=$D/n.sock",
            "--export", "type=nbd,id=e0,node-name=n0,writable=maybe"],
        ["--blockdev", "driver=null-co,node-name=n0", "--nbd-server", "addr.type=unix,addr.path=$D/n.sock",
            "--export", "type=nbd,id=e0,node-name=n0", "--export", "type=nbd,id=e0,node-name=n0"],
        ["--blockdev", "driver=null-co,node-name=n0", "--nbd-server", "addr.type=unix,addr.path=$D/n.sock",
            "--export", "type=nbd,id=e0,node-name=n0,bitmaps.0=nosuch"],
    ];

    public static TheoryData<int> Indexes => new(Enumerable.Range(0, Lines.Length));

    [Theory]
    [MemberData(nameof(Indexes))]
    public void Refused_command_lines_fail_as_in_qsd(int index)
    {
        using var dir = new TempDir("cli");
        QemuTools.QemuImg("create", "-q", "-f", "qcow2", dir.Combine("a.qcow2"), "16M").EnsureSuccess();
        string[] args = [.. Lines[index].Select(a => a.Replace("$D", dir.Path, StringComparison.Ordinal))];
        var qsd = Run(QemuTools.Resolve("qemu-storage-daemon"), [], args, dir.Path);
        var strata = Run("dotnet", [Daemons.StrataDll], args, dir.Path);
        Assert.Equal(qsd, strata);
    }

    /// <summary>The exit code and the first error line, with the program's name taken out (help and version print
    /// their own text: only the exit code counts there).</summary>
    private static (int ExitCode, string Error) Run(string program, string[] prefix, string[] args, string directory)
    {
        var psi = new ProcessStartInfo(program) { WorkingDirectory = directory, RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in prefix.Concat(args))
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromSeconds(30)))
        {
            p.Kill(entireProcessTree: true);
            return (-1, $"{Path.GetFileName(program)} still running after 30 s: {string.Join(' ', args)}");
        }
        // getopt names the program as it was started (a full path here); QEMU's own errors by its short name.
        string error = stderr.Result.Split('\n').Select(l => ProgramPrefix().Match(l)).Where(m => m.Success)
            .Select(m => m.Groups[1].Value).FirstOrDefault() ?? "";
        _ = stdout.Result;
        return (p.ExitCode, error.Replace(directory, "$D", StringComparison.Ordinal));
    }

    [System.Text.RegularExpressions.GeneratedRegex(@"^(?:\S*/)?(?:qemu-storage-daemon|strata-daemon): (.*)$")]
    private static partial System.Text.RegularExpressions.Regex ProgramPrefix();
}
