namespace Strata.Qmp.Json;

/// <summary>Token types of QEMU's JSON lexer (qobject/json-parser-int.h), above the lexer states.</summary>
internal enum QemuTokenType : byte
{
    Error = 0,
    LCurly = 100,
    RCurly,
    LSquare,
    RSquare,
    Colon,
    Comma,
    Integer,
    Float,
    Keyword,
    String,
}

/// <summary>A token: its type and where its text lies in the streamer's text buffer.</summary>
internal readonly record struct QemuToken(QemuTokenType Type, int Start, int Length);
