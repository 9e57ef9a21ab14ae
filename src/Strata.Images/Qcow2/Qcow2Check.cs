namespace Strata.Images.Qcow2;

// PLACEHOLDER — being replaced by the full checker (helper task). Not to be committed as is.
public enum Qcow2RepairMode { None, Leaks, All }

public static partial class Qcow2Check
{
    public static ValueTask RepairAsync(Qcow2Image image, Qcow2RepairMode mode, CancellationToken ct = default) =>
        throw new UnsupportedFeatureException($"Repairing '{image.FileName}' is not available yet");
}
