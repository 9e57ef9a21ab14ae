using System.Text.Json;
using Strata.Qmp.Framing;

namespace Strata.Qmp.Json;

/// <summary>
/// A push parser for a stream of JSON values that behaves as QEMU's QMP input does
/// (qobject/json-lexer.c, json-streamer.c, json-parser.c of QEMU 7.2):
/// values may span lines or share one; QEMU's extensions (single-quoted strings, <c>\'</c>,
/// modified UTF-8) are accepted; after a lexical error the input is skipped up to the next
/// structural character or control character; over-long, over-deep or over-large messages are
/// rejected with QEMU's messages. Every complete value or error becomes one <see cref="QmpFrame"/>.
/// Feed it bytes as they arrive, in pieces of any size. Not thread-safe.
/// </summary>
public sealed class QemuJsonStreamer
{
    // Lexer states (json-lexer.c); 0 is JSON_ERROR.
    private const byte InRecovery = 1;
    private const byte InDqStringEscape = 2;
    private const byte InDqString = 3;
    private const byte InSqStringEscape = 4;
    private const byte InSqString = 5;
    private const byte InZero = 6;
    private const byte InExpDigits = 7;
    private const byte InExpSign = 8;
    private const byte InExpE = 9;
    private const byte InMantissa = 10;
    private const byte InMantissaDigits = 11;
    private const byte InDigits = 12;
    private const byte InSign = 13;
    private const byte InKeyword = 14;
    private const byte InStart = 15;
    private const int StateCount = 16;
    private const byte Lookahead = 0x80;

    private static readonly byte[] Table = BuildTable();

    private readonly QmpLimits _limits;
    private readonly Queue<QmpFrame> _frames = new();
    private readonly List<QemuToken> _tokens = [];
    private byte[] _text = new byte[256];
    private int _textLength;   // bytes of completed tokens plus the token being lexed
    private int _tokenStart;   // where the token being lexed starts
    private long _tokenSize;   // sum of the lengths of the completed tokens
    private int _braces;
    private int _brackets;
    private byte _state = InStart;

    public QemuJsonStreamer(QmpLimits? limits = null)
    {
        _limits = limits ?? QmpLimits.Qemu;
    }

    /// <summary>Number of complete frames waiting in <see cref="TryDequeue"/>.</summary>
    public int Pending => _frames.Count;

    /// <summary>Takes the oldest complete frame.</summary>
    public bool TryDequeue(out QmpFrame frame) => _frames.TryDequeue(out frame!);

    /// <summary>Feeds received bytes; complete values become frames.</summary>
    public void Feed(ReadOnlySpan<byte> data)
    {
        foreach (var b in data)
        {
            FeedByte(b);
        }
    }

    /// <summary>Forgets a partial message and the lexer state (QEMU does this when a client disconnects).</summary>
    public void Reset()
    {
        ResetMessage();
        _state = InStart;
    }

    private void FeedByte(byte ch)
    {
        var consumed = false;
        while (!consumed)
        {
            var next = Table[(_state * 256) + ch];
            consumed = (next & Lookahead) == 0;
            next &= unchecked((byte)~Lookahead);
            if (consumed)
            {
                Append(ch);
            }

            switch (next)
            {
                case >= (byte)QemuTokenType.LCurly:
                    ProcessToken((QemuTokenType)next);
                    _textLength = _tokenStart;
                    next = InStart;
                    break;
                case InStart:
                    _textLength = _tokenStart;
                    break;
                case (byte)QemuTokenType.Error:
                    ProcessToken(QemuTokenType.Error);
                    next = InRecovery;
                    _textLength = _tokenStart;
                    break;
                case InRecovery:
                    _textLength = _tokenStart;
                    break;
            }

            _state = next;
        }

        // A single token may not grow without bound either.
        if (_textLength - _tokenStart > _limits.MaxTokenSize)
        {
            Emit(QmpFrame.FromError("JSON token size limit exceeded"));
            _state = InStart;
        }
    }

    private void Append(byte ch)
    {
        if (_textLength == _text.Length)
        {
            Array.Resize(ref _text, _text.Length * 2);
        }

        _text[_textLength++] = ch;
    }

    private void ProcessToken(QemuTokenType type)
    {
        var length = _textLength - _tokenStart;
        switch (type)
        {
            case QemuTokenType.LCurly:
                _braces++;
                break;
            case QemuTokenType.RCurly:
                _braces--;
                break;
            case QemuTokenType.LSquare:
                _brackets++;
                break;
            case QemuTokenType.RSquare:
                _brackets--;
                break;
            case QemuTokenType.Error:
                var stray = ModifiedUtf8.DecodeLossy(_text.AsSpan(_tokenStart, length));
                Emit(QmpFrame.FromError($"JSON parse error, stray '{stray}'"));
                return;
        }

        if (_tokenSize + length + 1 > _limits.MaxTokenSize)
        {
            Emit(QmpFrame.FromError("JSON token size limit exceeded"));
            return;
        }

        if (_tokens.Count + 1 > _limits.MaxTokenCount)
        {
            Emit(QmpFrame.FromError("JSON token count limit exceeded"));
            return;
        }

        if (_brackets + _braces > _limits.MaxNesting)
        {
            Emit(QmpFrame.FromError("JSON nesting depth limit exceeded"));
            return;
        }

        _tokens.Add(new QemuToken(type, _tokenStart, length));
        _tokenSize += length;
        _tokenStart = _textLength;

        if ((_braces > 0 || _brackets > 0) && _braces >= 0 && _brackets >= 0)
        {
            return; // the value is not complete yet
        }

        var (json, error) = QemuJsonParser.Parse(_tokens, _text, _limits.MaxNesting);
        Emit(error is null
            ? QmpFrame.FromDocument(JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = _limits.MaxNesting + 2 }))
            : QmpFrame.FromError(error));
    }

    private void Emit(QmpFrame frame)
    {
        _frames.Enqueue(frame);
        ResetMessage();
    }

    private void ResetMessage()
    {
        _braces = 0;
        _brackets = 0;
        _tokens.Clear();
        _tokenSize = 0;
        _textLength = 0;
        _tokenStart = 0;
        if (_text.Length > 1 << 16)
        {
            _text = new byte[256]; // don't hold on to the buffer of a huge message
        }
    }

    private static byte[] BuildTable()
    {
        var t = new byte[StateCount * 256]; // default: JSON_ERROR (0)

        void Set(byte state, int from, int to, byte value)
        {
            for (var c = from; c <= to; c++)
            {
                t[(state * 256) + c] = value;
            }
        }

        void One(byte state, char c, byte value) => t[(state * 256) + c] = value;
        void Terminal(byte state, QemuTokenType type) => Set(state, 0, 255, (byte)((byte)type | Lookahead));

        // error recovery: skip to a structural character, a control character other than
        // '\t', or the impossible UTF-8 bytes 0xFE, 0xFF.
        Set(InRecovery, 0, 0x1F, InStart | Lookahead);
        Set(InRecovery, 0x20, 0xFD, InRecovery);
        Set(InRecovery, 0xFE, 0xFF, InStart | Lookahead);
        One(InRecovery, '\t', InRecovery);
        foreach (var c in "[]{}:,")
        {
            One(InRecovery, c, InStart | Lookahead);
        }

        // strings
        Set(InDqStringEscape, 0x20, 0xFD, InDqString);
        Set(InDqString, 0x20, 0xFD, InDqString);
        One(InDqString, '\\', InDqStringEscape);
        One(InDqString, '"', (byte)QemuTokenType.String);
        Set(InSqStringEscape, 0x20, 0xFD, InSqString);
        Set(InSqString, 0x20, 0xFD, InSqString);
        One(InSqString, '\\', InSqStringEscape);
        One(InSqString, '\'', (byte)QemuTokenType.String);

        // numbers
        Terminal(InZero, QemuTokenType.Integer);
        Set(InZero, '0', '9', (byte)QemuTokenType.Error);
        One(InZero, '.', InMantissa);

        Terminal(InExpDigits, QemuTokenType.Float);
        Set(InExpDigits, '0', '9', InExpDigits);
        Set(InExpSign, '0', '9', InExpDigits);
        One(InExpE, '-', InExpSign);
        One(InExpE, '+', InExpSign);
        Set(InExpE, '0', '9', InExpDigits);

        Terminal(InMantissaDigits, QemuTokenType.Float);
        Set(InMantissaDigits, '0', '9', InMantissaDigits);
        One(InMantissaDigits, 'e', InExpE);
        One(InMantissaDigits, 'E', InExpE);
        Set(InMantissa, '0', '9', InMantissaDigits);

        Terminal(InDigits, QemuTokenType.Integer);
        Set(InDigits, '0', '9', InDigits);
        One(InDigits, 'e', InExpE);
        One(InDigits, 'E', InExpE);
        One(InDigits, '.', InMantissa);
        One(InSign, '0', InZero);
        Set(InSign, '1', '9', InDigits);

        // keywords: [a-z]+, checked by the parser
        Terminal(InKeyword, QemuTokenType.Keyword);
        Set(InKeyword, 'a', 'z', InKeyword);

        // start
        One(InStart, '"', InDqString);
        One(InStart, '\'', InSqString);
        One(InStart, '0', InZero);
        Set(InStart, '1', '9', InDigits);
        One(InStart, '-', InSign);
        One(InStart, '{', (byte)QemuTokenType.LCurly);
        One(InStart, '}', (byte)QemuTokenType.RCurly);
        One(InStart, '[', (byte)QemuTokenType.LSquare);
        One(InStart, ']', (byte)QemuTokenType.RSquare);
        One(InStart, ',', (byte)QemuTokenType.Comma);
        One(InStart, ':', (byte)QemuTokenType.Colon);
        Set(InStart, 'a', 'z', InKeyword);
        foreach (var c in " \t\r\n")
        {
            One(InStart, c, InStart);
        }

        return t;
    }
}
