namespace Strata.Img.Cli;

/// <summary>QEMU's qemu-progress: "    (12.34/100%)" rewritten with \r on stdout, at least every <c>minSkip</c> percent.</summary>
public sealed class Progress(bool enabled, float minSkip)
{
    private float _current;
    private float _lastPrint;

    public bool Enabled => enabled;

    /// <summary>qemu_progress_print(delta, max): max 0 sets the value, otherwise adds delta/100*max.</summary>
    public void Print(float delta, int max)
    {
        if (!enabled)
            return;
        float current = Math.Min(100, max == 0 ? delta : _current + delta / 100 * max); // QEMU caps at 100%
        _current = current;
        if (current > _lastPrint + minSkip || current < _lastPrint - minSkip || current == 0 || current == 100)
        {
            _lastPrint = _current;
            Io.Out.Write($"    ({Sizes.F2(_current)}/100%)\r");
            Io.Flush();
        }
    }

    public void End()
    {
        if (enabled)
            Io.Out.Write("\n");
    }
}
