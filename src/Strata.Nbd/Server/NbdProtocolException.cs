namespace Strata.Nbd.Server;

/// <summary>The client broke the protocol in a way QEMU answers by dropping the connection.</summary>
internal sealed class NbdProtocolException(string message) : Exception(message);
