using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Strata.Nbd.Server;

/// <summary>
/// A client's socket, driven with plain non-blocking recv/sendmsg and poll(2) from the thread that needs it: the
/// connection's own thread receives, parses and answers what it can in the same wake-up in which the bytes arrived.
/// .NET's socket engine hands each readiness event of a socket it watches from its epoll thread to a thread-pool
/// worker, and once a socket has waited asynchronously every incoming packet wakes both, even with no receive
/// pending; that hop cost a quarter to a third of the request rate at depth 32 (fio, bench_nbd.sh). So no
/// asynchronous socket operation is ever started on it. Linux (and other Unix) only.
/// </summary>
internal sealed unsafe partial class NbdSocket : IDisposable
{
    private const string Libc = "libc";
    private const int MSG_DONTWAIT = 0x40;
    private const int MSG_NOSIGNAL = 0x4000;
    private const short POLLIN = 0x001;
    private const short POLLOUT = 0x004;
    private const short POLLERR = 0x008;
    private const short POLLHUP = 0x010;
    private const short POLLRDHUP = 0x2000;
    private const int EINTR = 4;
    private const int EAGAIN = 11;
    private const int MaxIov = 64;

    private readonly SafeHandle _handle;
    private readonly int _fd;
    private bool _addedRef;
    private bool _drained;

    public NbdSocket(Socket socket)
    {
        _handle = socket.SafeHandle;
        _handle.DangerousAddRef(ref _addedRef);
        _fd = (int)_handle.DangerousGetHandle();
    }

    /// <summary>Waits for data and receives what is there, up to <paramref name="buffer"/>'s size; 0 at end of stream.</summary>
    public int Receive(Span<byte> buffer)
    {
        fixed (byte* p = buffer)
        {
            while (true)
            {
                // A short receive emptied the socket: wait first rather than pay for a recv that finds nothing.
                if (_drained)
                {
                    if (!SpinUntilReadable())
                        Wait(POLLIN);
                    _drained = false;
                }
                nint n = recv(_fd, p, (nuint)buffer.Length, MSG_DONTWAIT);
                if (n >= 0)
                {
                    _drained = n < buffer.Length;
                    return (int)n;
                }
                int errno = Marshal.GetLastPInvokeError();
                if (errno == EAGAIN)
                    _drained = true;
                else if (errno != EINTR)
                    throw Failure(errno);
            }
        }
    }

    /// <summary>Fills <paramref name="buffer"/> completely.</summary>
    public void ReceiveExact(Span<byte> buffer)
    {
        while (buffer.Length > 0)
        {
            int n = Receive(buffer);
            if (n == 0)
                throw new EndOfStreamException("Unexpected end-of-file before all data were read");
            buffer = buffer[n..];
        }
    }

    /// <summary>Sends all of <paramref name="data"/>, waiting while the socket's buffer is full.</summary>
    public void Send(ReadOnlySpan<byte> data)
    {
        fixed (byte* p = data)
        {
            long sent = 0;
            while (sent < data.Length)
            {
                nint n = send(_fd, p + sent, (nuint)(data.Length - sent), MSG_DONTWAIT | MSG_NOSIGNAL);
                if (n >= 0)
                    sent += n;
                else
                    WaitAfterSendError();
            }
        }
    }

    /// <summary>
    /// Sends every segment, in order, with as few sendmsg calls as the kernel allows. One caller at a time (the
    /// connection's reply writer).
    /// </summary>
    public void Send(List<ArraySegment<byte>> segments)
    {
        var iov = stackalloc IoVec[MaxIov];
        try
        {
            int first = 0;
            int offset = 0; // bytes of segments[first] already sent
            while (first < segments.Count)
            {
                int count = 0;
                for (int i = first; i < segments.Count && count < MaxIov; i++, count++)
                {
                    var s = segments[i];
                    int skip = i == first ? offset : 0;
                    iov[count].Base = Pin(s.Array!) + s.Offset + skip;
                    iov[count].Length = (nuint)(s.Count - skip);
                }
                var msg = new MsgHdr { Iov = iov, IovLen = (nuint)count };
                nint n = sendmsg(_fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
                if (n < 0)
                {
                    WaitAfterSendError();
                    continue;
                }
                long left = n;
                while (first < segments.Count && left >= segments[first].Count - offset)
                {
                    left -= segments[first].Count - offset;
                    offset = 0;
                    first++;
                }
                offset += (int)left;
            }
        }
        finally
        {
            UnpinAll();
        }
    }

    private void WaitAfterSendError()
    {
        int errno = Marshal.GetLastPInvokeError();
        if (errno == EAGAIN)
            Wait(POLLOUT);
        else if (errno != EINTR)
            throw Failure(errno);
    }

    /// <summary>
    /// A client at depth 1 sends its next request a few microseconds after our reply; waking a thread blocked in poll
    /// takes longer than that on a virtual machine, so the thread looks for a while before it blocks (as the .NET
    /// thread pool's workers spin before they sleep).
    /// </summary>
    private bool SpinUntilReadable()
    {
        var pfd = new PollFd { Fd = _fd, Events = POLLIN };
        long until = System.Diagnostics.Stopwatch.GetTimestamp() + SpinTicks;
        do
        {
            if (poll(&pfd, 1, 0) != 0)
                return true;
            Thread.Yield(); // on a busy machine the client may need this core to send it
        }
        while (System.Diagnostics.Stopwatch.GetTimestamp() < until);
        return false;
    }

    private static readonly long SpinTicks = System.Diagnostics.Stopwatch.Frequency * 50 / 1_000_000;

    private void Wait(short events)
    {
        var pfd = new PollFd { Fd = _fd, Events = events };
        // Any event (ready, hang-up, error) ends the wait: the call that follows tells which.
        while (poll(&pfd, 1, -1) < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno != EINTR)
                throw Failure(errno);
        }
    }

    /// <summary>Whether the client has closed its end (what it sent before may still wait to be read).</summary>
    public bool PeerHasClosed()
    {
        var pfd = new PollFd { Fd = _fd, Events = POLLRDHUP };
        return poll(&pfd, 1, 0) > 0 && (pfd.Revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
    }

    private static IOException Failure(int errno)
    {
        var e = new SocketException(errno);
        return new IOException(e.Message, e);
    }

    public void Dispose()
    {
        if (_addedRef)
        {
            _addedRef = false;
            _handle.DangerousRelease();
        }
    }

    // The distinct arrays of the gather send in progress, pinned (most replies share the writer's copy buffer).
    private GCHandle[] _pins = new GCHandle[8];
    private byte[]?[] _pinned = new byte[]?[8];
    private int _pinCount;

    private byte* Pin(byte[] array)
    {
        for (int i = _pinCount - 1; i >= 0; i--)
            if (ReferenceEquals(_pinned[i], array))
                return (byte*)_pins[i].AddrOfPinnedObject();
        if (_pinCount == _pins.Length)
        {
            Array.Resize(ref _pins, _pinCount * 2);
            Array.Resize(ref _pinned, _pinCount * 2);
        }
        _pins[_pinCount] = GCHandle.Alloc(array, GCHandleType.Pinned);
        _pinned[_pinCount] = array;
        return (byte*)_pins[_pinCount++].AddrOfPinnedObject();
    }

    private void UnpinAll()
    {
        for (int i = 0; i < _pinCount; i++)
        {
            _pins[i].Free();
            _pinned[i] = null;
        }
        _pinCount = 0;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct IoVec
    {
        public byte* Base;
        public nuint Length;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct MsgHdr
    {
        public void* Name;
        public uint NameLen;
        public IoVec* Iov;
        public nuint IovLen;
        public void* Control;
        public nuint ControlLen;
        public int Flags;
    }

    [LibraryImport(Libc, SetLastError = true)]
    private static partial nint recv(int fd, byte* buf, nuint len, int flags);

    [LibraryImport(Libc, SetLastError = true)]
    private static partial nint send(int fd, byte* buf, nuint len, int flags);

    [LibraryImport(Libc, SetLastError = true)]
    private static partial nint sendmsg(int fd, MsgHdr* msg, int flags);

    [LibraryImport(Libc, SetLastError = true)]
    private static partial int poll(PollFd* fds, nuint nfds, int timeout);
}
