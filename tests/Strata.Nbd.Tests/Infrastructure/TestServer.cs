using Strata.Images.Format;

namespace Strata.Nbd.Tests.Infrastructure;

/// <summary>An <see cref="NbdServer"/> on a unix socket in a scratch directory, with the images it exports.</summary>
public sealed class TestServer : IAsyncDisposable
{
    private readonly List<IImage> _images = [];

    private TestServer(TempDir dir, NbdServer server, string socketPath, bool ownsDir)
    {
        Dir = dir;
        Server = server;
        SocketPath = socketPath;
        OwnsDir = ownsDir;
    }

    public TempDir Dir { get; }
    public NbdServer Server { get; }
    public string SocketPath { get; }
    private bool OwnsDir { get; }

    public static async Task<TestServer> StartAsync(NbdServerOptions? options = null, TempDir? dir = null, Microsoft.Extensions.Logging.ILogger? logger = null)
    {
        bool owns = dir == null;
        dir ??= new TempDir();
        var server = new NbdServer(options, logger);
        string socket = dir.Combine("s.sock");
        server.AddUnixListener(socket);
        await server.StartAsync();
        return new TestServer(dir, server, socket, owns);
    }

    /// <summary>Opens an image file and exports it (the server disposes the image at the end).</summary>
    public async Task<IImage> ExportFileAsync(string name, string path, NbdExportOptions? options = null, bool readOnlyImage = false)
    {
        var image = await ImageOpener.OpenAsync(path, new ImageOpenOptions { ReadOnly = readOnlyImage });
        Export(name, image, options);
        return image;
    }

    public void Export(string name, IImage image, NbdExportOptions? options = null)
    {
        _images.Add(image);
        Server.AddExport(new NbdExport(name, image, options));
    }

    public Task<RawNbdClient> ConnectAsync(uint? clientFlags = 3) => RawNbdClient.ConnectAsync(SocketPath, clientFlags);

    public string Uri(string export) => Tools.Uri(SocketPath, export);

    public async ValueTask DisposeAsync()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        await Server.StopAsync(cts.Token);
        await Server.DisposeAsync();
        foreach (var image in _images)
            await image.DisposeAsync();
        if (OwnsDir)
            Dir.Dispose();
    }
}
