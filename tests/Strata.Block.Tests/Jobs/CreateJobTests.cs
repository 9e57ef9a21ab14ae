using System.Text.Json;
using System.Text.Json.Nodes;
using Strata.Block.Jobs;
using Strata.Images.Qcow2;
using Strata.Images.Storage;
using Xunit;

namespace Strata.Block.Tests.Jobs;

/// <summary>The create job through the C# API (no QMP): qemu-img reads what it wrote.</summary>
public sealed class CreateJobTests
{
    [Fact]
    public async Task File_then_qcow2_through_the_node_as_qemu_img_sees_it()
    {
        using var dir = new TempDir("createjob");
        using var b = new JobBench();
        await using var graph = new BlockGraph();
        string path = dir.Combine("d.qcow2");
        QemuTools.QemuImg("create", "-q", "-f", "raw", dir.Combine("base.img"), "64M").EnsureSuccess();

        var file = CreateJob.Start(b.Registry, graph, "f", new FileCreateRequest(path, 12345) { Preallocation = Preallocation.Full });
        await JobBench.WaitForStatus(file, JobStatus.Concluded);
        Assert.Null(file.Error);
        Assert.Equal(12345, new FileInfo(path).Length);
        Assert.Equal(["created", "running", "waiting", "pending", "concluded"], b.Statuses(file));
        file.UserDismiss();

        await graph.AddAsync(JsonNode.Parse($$"""{"driver":"file","node-name":"n","filename":"{{path}}"}""")!.AsObject());
        var qcow2 = CreateJob.Start(b.Registry, graph, "q", new Qcow2CreateRequest("n", 64 << 20)
        {
            ClusterSize = 16384,
            LazyRefcounts = true,
            RefcountBits = 8,
            CompressionType = CompressionType.Zstd,
            BackingFile = "base.img",
            BackingFormat = "raw",
        });
        await JobBench.WaitForStatus(qcow2, JobStatus.Concluded);
        Assert.Null(qcow2.Error);
        Assert.Equal((1, 1), (qcow2.CurrentProgress, qcow2.TotalProgress));

        var info = QemuTools.QemuImg("info", "--output=json", "-U", path);
        Assert.True(info.Succeeded, info.CommandLine + ": " + info.StdErr);
        using var doc = JsonDocument.Parse(info.StdOut);
        var root = doc.RootElement;
        Assert.Equal("qcow2", root.GetProperty("format").GetString());
        Assert.Equal(64L << 20, root.GetProperty("virtual-size").GetInt64());
        Assert.Equal(16384, root.GetProperty("cluster-size").GetInt32());
        Assert.Equal("base.img", root.GetProperty("backing-filename").GetString());
        var specific = root.GetProperty("format-specific").GetProperty("data");
        Assert.True(specific.GetProperty("lazy-refcounts").GetBoolean());
        Assert.Equal(8, specific.GetProperty("refcount-bits").GetInt32());
        Assert.Equal("zstd", specific.GetProperty("compression-type").GetString());
        var check = QemuTools.QemuImg("check", "-U", path);
        Assert.True(check.Succeeded, check.StdOut + check.StdErr);
    }

    [Theory]
    [InlineData(1000UL, null, "Image size must be a multiple of 512 bytes")]
    [InlineData(1048576UL, 2, "Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)")]
    public async Task Qcow2_checks_fail_the_job_before_the_command_returns(ulong size, int? version, string message)
    {
        using var dir = new TempDir("createjob");
        using var b = new JobBench();
        await using var graph = new BlockGraph();
        string path = dir.Combine("e.qcow2");
        await File.WriteAllBytesAsync(path, []);
        await graph.AddAsync(JsonNode.Parse($$"""{"driver":"file","node-name":"n","filename":"{{path}}"}""")!.AsObject());
        var job = CreateJob.Start(b.Registry, graph, "q", new Qcow2CreateRequest("n", size) { Version = version, LazyRefcounts = true });
        Assert.Equal(JobStatus.Concluded, job.Status); // no wait: it failed inline
        Assert.Equal(message, job.Error);
        Assert.Equal(["created", "running", "aborting", "concluded"], b.Statuses(job));
        Assert.Equal(0, new FileInfo(path).Length);
        Assert.Equal("Driver does not support blockdev-create", Assert.Throws<BlockException>(() => CreateJob.CheckDriver("raw")).Message);
    }
}
