using System.Net;
using System.Runtime.InteropServices;
using Strata.Block;

namespace Strata.Server;

/// <summary>
/// Where an inet listener binds, resolved as QEMU's inet_listen_saddr does: getaddrinfo with AI_PASSIVE for a stream
/// socket, so a port may be a service name ("nbd") and an empty host means every address; its failures carry
/// getaddrinfo's own wording.
/// </summary>
public static partial class InetListenAddress
{
    private const int AiPassive = 0x1, AiNumericHost = 0x4, AiNumericServ = 0x400;
    private const int AfUnspec = 0, AfInet = 2, AfInet6 = 10, SockStream = 1;

    /// <summary>The addresses to try, in getaddrinfo's order.</summary>
    /// <param name="ipv4">QEMU's ipv4/ipv6 options: only one of the families when the other is turned off.</param>
    public static unsafe IReadOnlyList<IPEndPoint> Resolve(string host, string port, bool? ipv4 = null, bool? ipv6 = null, bool numeric = false)
    {
        // QEMU copies the port into a buffer of 33 bytes, cutting what does not fit.
        port = Truncate(port, 32);
        var hints = new AddrInfo
        {
            Flags = AiPassive | (numeric ? AiNumericHost | AiNumericServ : 0),
            Family = Family(host, ipv4, ipv6),
            SockType = SockStream,
        };
        int rc = GetAddrInfo(host.Length > 0 ? host : null, port.Length > 0 ? port : null, &hints, out var list);
        if (rc != 0)
            throw new BlockException($"address resolution failed for {host}:{port}: {Marshal.PtrToStringUTF8(GaiStrError(rc))}");
        try
        {
            var endpoints = new List<IPEndPoint>();
            for (var ai = (AddrInfo*)list; ai != null; ai = ai->Next)
            {
                byte* sa = ai->Addr;
                int p = (sa[2] << 8) | sa[3];
                if (ai->Family == AfInet)
                    endpoints.Add(new IPEndPoint(new IPAddress(new ReadOnlySpan<byte>(sa + 4, 4)), p));
                else if (ai->Family == AfInet6)
                    endpoints.Add(new IPEndPoint(new IPAddress(new ReadOnlySpan<byte>(sa + 8, 16), *(uint*)(sa + 24)), p));
            }
            return endpoints;
        }
        finally
        {
            FreeAddrInfo(list);
        }
    }

    /// <summary>inet_ai_family_from_address.</summary>
    private static int Family(string host, bool? ipv4, bool? ipv6)
    {
        if (ipv4 == false && ipv6 == false)
            throw new BlockException("Cannot disable IPv4 and IPv6 at same time");
        if (ipv4 == true && ipv6 == true)
            return host.Length == 0 ? AfInet6 : AfUnspec;
        if (ipv6 == true || ipv4 == false)
            return AfInet6;
        if (ipv4 == true || ipv6 == false)
            return AfInet;
        return AfUnspec;
    }

    private static string Truncate(string s, int maxBytes)
    {
        if (System.Text.Encoding.UTF8.GetByteCount(s) <= maxBytes)
            return s;
        var bytes = System.Text.Encoding.UTF8.GetBytes(s);
        return System.Text.Encoding.UTF8.GetString(bytes, 0, maxBytes);
    }

    [StructLayout(LayoutKind.Sequential)]
    private unsafe struct AddrInfo
    {
        public int Flags, Family, SockType, Protocol;
        public uint AddrLen;
        public byte* Addr;
        public byte* CanonName;
        public AddrInfo* Next;
    }

    [LibraryImport("libc", EntryPoint = "getaddrinfo", StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial int GetAddrInfo(string? node, string? service, AddrInfo* hints, out nint result);

    [LibraryImport("libc", EntryPoint = "freeaddrinfo")]
    private static partial void FreeAddrInfo(nint list);

    [LibraryImport("libc", EntryPoint = "gai_strerror")]
    private static partial nint GaiStrError(int code);
}
