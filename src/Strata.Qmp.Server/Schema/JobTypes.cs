using static Strata.Qmp.Server.Schema.QapiMember;

namespace Strata.Qmp.Server.Schema;

/// <summary>
/// The QAPI types of the job commands, blockdev-create and JOB_STATUS_CHANGE, transcribed from qemu-storage-daemon
/// 7.2's schema (qapi/job.json, qapi/block-core.json; member order as QEMU visits them).
/// </summary>
public static class JobTypes
{
    private static readonly QapiBuiltin Str = QapiBuiltin.Str;
    private static readonly QapiBuiltin Int = QapiBuiltin.Int;
    private static readonly QapiBuiltin Size = QapiBuiltin.UInt64;
    private static readonly QapiBuiltin Bool = QapiBuiltin.Bool;

    public static QapiEnum JobType { get; } = new("JobType",
        "commit", "stream", "mirror", "backup", "create", "amend", "snapshot-load", "snapshot-save", "snapshot-delete");

    public static QapiEnum JobStatus { get; } = new("JobStatus",
        "undefined", "created", "running", "paused", "ready", "standby", "waiting", "pending", "aborting", "concluded", "null");

    public static QapiObject JobInfo { get; } = new("JobInfo",
        Req("id", Str), Req("type", JobType), Req("status", JobStatus), Req("current-progress", Int), Req("total-progress", Int),
        Opt("error", Str));

    /// <summary>The argument object of job-&lt;verb&gt; (each command has its own, as in QEMU).</summary>
    public static QapiObject JobIdArgs(string command) => new($"q_obj_{command}-arg", Req("id", Str));

    public static QapiObject JobStatusChangeData { get; } = new("q_obj_JOB_STATUS_CHANGE-arg", Req("id", Str), Req("status", JobStatus));

    // ---- blockdev-create ------------------------------------------------------------------------------

    private static readonly QapiEnum PreallocMode = new("PreallocMode", "off", "metadata", "falloc", "full");

    private static readonly QapiAlternate BlockdevRef = new("BlockdevRef", QmpTypes.BlockdevOptions, Str);

    private static readonly QapiObject CreateOptionsFile = new("BlockdevCreateOptionsFile",
        Req("filename", Str), Req("size", Size), Opt("preallocation", PreallocMode), Opt("nocow", Bool), Opt("extent-size-hint", Size));

    private static readonly QapiEnum HashAlg = new("QCryptoHashAlgorithm", "md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160");

    private static readonly QapiObject CryptoCreateOptions = new("QCryptoBlockCreateOptions",
        [Req("format", new QapiEnum("QCryptoBlockFormat", "qcow", "luks"))], "format",
        ("qcow", new QapiObject("QCryptoBlockOptionsQCow", Opt("key-secret", Str))),
        ("luks", new QapiObject("QCryptoBlockCreateOptionsLUKS",
            Opt("key-secret", Str),
            Opt("cipher-alg", new QapiEnum("QCryptoCipherAlgorithm", "aes-128", "aes-192", "aes-256", "des", "3des", "cast5-128",
                "serpent-128", "serpent-192", "serpent-256", "twofish-128", "twofish-192", "twofish-256")),
            Opt("cipher-mode", new QapiEnum("QCryptoCipherMode", "ecb", "cbc", "xts", "ctr")),
            Opt("ivgen-alg", new QapiEnum("QCryptoIVGenAlgorithm", "plain", "plain64", "essiv")),
            Opt("ivgen-hash-alg", HashAlg), Opt("hash-alg", HashAlg), Opt("iter-time", Int))));

    private static readonly QapiObject CreateOptionsQcow2 = new("BlockdevCreateOptionsQcow2",
        Req("file", BlockdevRef), Opt("data-file", BlockdevRef), Opt("data-file-raw", Bool), Opt("extended-l2", Bool),
        Req("size", Size), Opt("version", new QapiEnum("BlockdevQcow2Version", "v2", "v3")), Opt("backing-file", Str),
        Opt("backing-fmt", QmpTypes.BlockdevDriver), Opt("encrypt", CryptoCreateOptions), Opt("cluster-size", Size),
        Opt("preallocation", PreallocMode), Opt("lazy-refcounts", Bool), Opt("refcount-bits", Int),
        Opt("compression-type", new QapiEnum("Qcow2CompressionType", "zlib", "zstd")));

    /// <summary>BlockdevCreateOptions: the drivers Strata creates carry their members; the others have none here.</summary>
    public static QapiObject BlockdevCreateOptions { get; } = new("BlockdevCreateOptions",
        [Req("driver", QmpTypes.BlockdevDriver)], "driver", ("file", CreateOptionsFile), ("qcow2", CreateOptionsQcow2));

    public static QapiObject BlockdevCreateArgs { get; } = new("q_obj_blockdev-create-arg",
        Req("job-id", Str), Req("options", BlockdevCreateOptions));
}
