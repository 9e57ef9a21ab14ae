using System.Net.Sockets;
using System.Threading.Tasks.Sources;

namespace Strata.Nbd.Server;

/// <summary>
/// A reusable vectored send (sendmsg with an iovec): Socket.SendAsync(IList) allocates a Task and copies the list on
/// every call; this keeps one SocketAsyncEventArgs per connection and completes through a ValueTask.
/// </summary>
internal sealed class GatherSender : SocketAsyncEventArgs, IValueTaskSource<int>
{
    private ManualResetValueTaskSourceCore<int> _core;

    public GatherSender() : base(unsafeSuppressExecutionContextFlow: true)
    {
    }

    /// <summary>Sends the segments; one operation at a time per sender.</summary>
    public ValueTask<int> SendAsync(Socket socket, IList<ArraySegment<byte>> segments)
    {
        _core.Reset();
        BufferList = segments;
        bool pending;
        try
        {
            pending = socket.SendAsync(this);
        }
        catch
        {
            BufferList = null;
            throw;
        }
        if (pending)
            return new ValueTask<int>(this, _core.Version);
        BufferList = null;
        return SocketError == SocketError.Success
            ? new ValueTask<int>(BytesTransferred)
            : ValueTask.FromException<int>(new SocketException((int)SocketError));
    }

    protected override void OnCompleted(SocketAsyncEventArgs e)
    {
        BufferList = null;
        if (SocketError == SocketError.Success)
            _core.SetResult(BytesTransferred);
        else
            _core.SetException(new SocketException((int)SocketError));
    }

    public int GetResult(short token) => _core.GetResult(token);

    public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);
}
