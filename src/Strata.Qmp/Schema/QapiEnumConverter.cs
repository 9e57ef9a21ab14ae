using System.Text.Json;
using System.Text.Json.Serialization;

namespace Strata.Qmp;

/// <summary>
/// QAPI enums on the wire: lower-case, words joined by '-' (<c>OnSuccess</c> ⇄ <c>on-success</c>);
/// members whose QAPI name differs from that rule carry <see cref="JsonStringEnumMemberNameAttribute"/>.
/// AOT-safe (no reflection beyond the enum's own metadata).
/// </summary>
public sealed class QapiEnumConverter<TEnum> : JsonStringEnumConverter<TEnum>
    where TEnum : struct, Enum
{
    public QapiEnumConverter()
        : base(JsonNamingPolicy.KebabCaseLower, allowIntegerValues: false)
    {
    }
}
