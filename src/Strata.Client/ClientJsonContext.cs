using System.Text.Json.Serialization;

namespace Strata.Client;

[JsonSerializable(typeof(long))]
internal sealed partial class ClientJsonContext : JsonSerializerContext
{
}
