using System.Text.Json;
using Xunit;

namespace Strata.Qmp.Tests;

/// <summary>Argument records serialize with the schema's member names and QAPI enum values.</summary>
public class SchemaTests
{
    private static readonly QmpJsonContext Ctx = QmpJsonContext.Default;

    [Fact]
    public void Blockdev_options_with_inline_file()
    {
        var options = BlockdevOptions.Qcow2("d0", BlockdevOptions.File(null, "/x.qcow2", new BlockdevOptionsFile
        {
            Filename = "ignored", Aio = BlockdevAioOptions.IoUring, Locking = OnOffAuto.Off,
        }), BlockdevRefOrNull.Null) with { ReadOnly = true, DetectZeroes = BlockdevDetectZeroesOptions.Unmap };
        var json = JsonSerializer.Serialize(options, Ctx.BlockdevOptions);
        Assert.Equal(
            "{\"driver\":\"qcow2\",\"node-name\":\"d0\",\"read-only\":true,\"detect-zeroes\":\"unmap\"," +
            "\"file\":{\"driver\":\"file\",\"filename\":\"/x.qcow2\",\"locking\":\"off\",\"aio\":\"io_uring\"},\"backing\":null}",
            json);

        var back = JsonSerializer.Deserialize(json, Ctx.BlockdevOptions)!;
        Assert.Equal("qcow2", back.Driver);
        var qcow2 = back.AsQcow2();
        Assert.True(qcow2.Backing!.IsNull);
        Assert.Equal("/x.qcow2", qcow2.File.Definition!.AsFile().Filename);
        Assert.Equal(BlockdevAioOptions.IoUring, qcow2.File.Definition!.AsFile().Aio);
    }

    [Fact]
    public void Blockdev_ref_by_name()
    {
        var json = JsonSerializer.Serialize(BlockdevOptions.Raw("r0", "f0", offset: 512), Ctx.BlockdevOptions);
        Assert.Equal("{\"driver\":\"raw\",\"node-name\":\"r0\",\"file\":\"f0\",\"offset\":512}", json);
        Assert.Equal("f0", JsonSerializer.Deserialize(json, Ctx.BlockdevOptions)!.AsRaw().File.Reference);
        Assert.Equal("{\"driver\":\"null-co\",\"node-name\":\"n\",\"size\":4096,\"read-zeroes\":true}",
            JsonSerializer.Serialize(BlockdevOptions.NullCo("n", 4096, true), Ctx.BlockdevOptions));
    }

    [Fact]
    public void Blockdev_create()
    {
        var args = new BlockdevCreateArgs
        {
            JobId = "c",
            Options = BlockdevCreateOptions.Qcow2("f0", 1 << 20, new BlockdevCreateOptionsQcow2
            {
                File = "x", Size = 0, Version = BlockdevQcow2Version.V3, CompressionType = Qcow2CompressionType.Zstd,
                Preallocation = PreallocMode.Metadata,
            }),
        };
        Assert.Equal(
            "{\"job-id\":\"c\",\"options\":{\"driver\":\"qcow2\",\"file\":\"f0\",\"size\":1048576,\"version\":\"v3\",\"preallocation\":\"metadata\",\"compression-type\":\"zstd\"}}",
            JsonSerializer.Serialize(args, Ctx.BlockdevCreateArgs));
        Assert.Equal("{\"driver\":\"file\",\"filename\":\"/a\",\"size\":0}",
            JsonSerializer.Serialize(BlockdevCreateOptions.File("/a", 0), Ctx.BlockdevCreateOptions));
    }

    [Fact]
    public void Transaction_and_backup()
    {
        var args = new TransactionArgs
        {
            Actions =
            [
                TransactionAction.BlockdevSnapshotSync(new BlockdevSnapshotSyncArgs
                {
                    NodeName = "d0", SnapshotFile = "/s.qcow2", SnapshotNodeName = "s1", Mode = NewImageMode.AbsolutePaths,
                }),
                TransactionAction.DriveBackup(new DriveBackupArgs
                {
                    Device = "d0", Sync = MirrorSyncMode.Full, Target = "/b.qcow2", BitmapMode = BitmapSyncMode.OnSuccess,
                    OnSourceError = BlockdevOnError.Enospc,
                }),
                TransactionAction.BlockDirtyBitmapMerge(new BlockDirtyBitmapMergeArgs
                {
                    Node = "d0", Target = "t", Bitmaps = ["a", BlockDirtyBitmapOrStr.Of("d1", "b")],
                }),
                TransactionAction.Abort(),
            ],
            Properties = new TransactionProperties { CompletionMode = ActionCompletionMode.Grouped },
        };
        Assert.Equal(
            "{\"actions\":[" +
            "{\"type\":\"blockdev-snapshot-sync\",\"data\":{\"node-name\":\"d0\",\"snapshot-file\":\"/s.qcow2\",\"snapshot-node-name\":\"s1\",\"mode\":\"absolute-paths\"}}," +
            "{\"type\":\"drive-backup\",\"data\":{\"device\":\"d0\",\"sync\":\"full\",\"bitmap-mode\":\"on-success\",\"on-source-error\":\"enospc\",\"target\":\"/b.qcow2\"}}," +
            "{\"type\":\"block-dirty-bitmap-merge\",\"data\":{\"node\":\"d0\",\"target\":\"t\",\"bitmaps\":[\"a\",{\"node\":\"d1\",\"name\":\"b\"}]}}," +
            "{\"type\":\"abort\",\"data\":{}}]," +
            "\"properties\":{\"completion-mode\":\"grouped\"}}",
            JsonSerializer.Serialize(args, Ctx.TransactionArgs));
        var back = JsonSerializer.Deserialize(JsonSerializer.Serialize(args, Ctx.TransactionArgs), Ctx.TransactionArgs)!;
        Assert.Equal("s1", back.Actions[0].DataAs(Ctx.BlockdevSnapshotSyncArgs).SnapshotNodeName);
        Assert.Equal("d1", back.Actions[2].DataAs(Ctx.BlockDirtyBitmapMergeArgs).Bitmaps[1].Node);
    }

    [Fact]
    public void Exports_and_nbd()
    {
        Assert.Equal(
            "{\"type\":\"nbd\",\"id\":\"e1\",\"node-name\":\"d0\",\"writable\":true,\"name\":\"exp\",\"allocation-depth\":true}",
            JsonSerializer.Serialize(BlockExportOptions.Nbd("e1", "d0", new BlockExportOptionsNbd { Name = "exp", AllocationDepth = true }, true),
                Ctx.BlockExportOptions));
        Assert.Equal("{\"addr\":{\"type\":\"unix\",\"data\":{\"path\":\"/n.sock\"}}}",
            JsonSerializer.Serialize(new NbdServerStartArgs { Addr = SocketAddressLegacy.Unix("/n.sock") }, Ctx.NbdServerStartArgs));
        Assert.Equal("{\"id\":\"e1\",\"mode\":\"hard\"}",
            JsonSerializer.Serialize(new BlockExportDelArgs { Id = "e1", Mode = BlockExportRemoveMode.Hard }, Ctx.BlockExportDelArgs));
    }

    [Theory]
    [InlineData(JobType.SnapshotLoad, "\"snapshot-load\"")]
    [InlineData(JobType.Create, "\"create\"")]
    public void Job_type_names(JobType type, string json) => Assert.Equal(json, JsonSerializer.Serialize(type, Ctx.JobType));

    [Fact]
    public void Job_status_null_is_a_string()
    {
        Assert.Equal("\"null\"", JsonSerializer.Serialize(JobStatus.Null, Ctx.JobStatus));
        Assert.Equal(JobStatus.Null, JsonSerializer.Deserialize("\"null\"", Ctx.JobStatus));
    }

    [Fact]
    public void Unknown_error_class_reads_as_generic()
    {
        var e = JsonSerializer.Deserialize("{\"class\":\"SomethingNew\",\"desc\":\"x\"}", Ctx.QmpError)!;
        Assert.Equal(QmpErrorClass.GenericError, e.Class);
        Assert.Equal("{\"class\":\"KVMMissingCap\",\"desc\":\"y\"}",
            JsonSerializer.Serialize(new QmpError(QmpErrorClass.KVMMissingCap, "y"), Ctx.QmpError));
    }

    [Fact]
    public void Schema_info_keeps_optional_members()
    {
        var json = "[{\"name\": \"5\", \"members\": [{\"name\": \"device\", \"default\": null, \"type\": \"str\"}, {\"name\": \"size\", \"type\": \"int\"}], \"meta-type\": \"object\"}]";
        var list = JsonSerializer.Deserialize(json, Ctx.ListSchemaInfo)!;
        Assert.True(list[0].Members![0].IsOptional);
        Assert.False(list[0].Members![1].IsOptional);
        Assert.Equal(SchemaMetaType.Object, list[0].MetaType);
    }
}
