"""An edited clip's file: the start clip's own samples wherever it was kept, the model's elsewhere.

The kept part never passes through the VAE: its samples are copied from the start clip. At each
edge of a generated range a short linear cross-fade runs over the kept side (the model's audio
there was decoded from the start clip's own latent, so the two agree closely and the fade is
inaudible), and everything further from the range is the start clip, sample for sample.
"""

from __future__ import annotations

import numpy as np

#: Length of the cross-fade at each edge of a generated range (seconds; at most 0.1 s).
EDGE_FADE_SECONDS = 0.1


def keep_original(
    decoded: np.ndarray, original: np.ndarray, generated: tuple[tuple[int, int], ...], fade: int
) -> np.ndarray:
    """``original`` (the start clip placed in the clip, same length as ``decoded``) with ``decoded``
    in the ``generated`` sample ranges, cross-faded over ``fade`` kept samples before and after each."""
    out = original.astype(np.float32, copy=True)
    n = len(out)
    for start, end in generated:
        out[start:end] = decoded[start:end]
        for edge, after in ((start, False), (end, True)):
            if edge <= 0 or edge >= n:
                continue  # the clip's own end: nothing kept to fade into
            lo, hi = (edge, min(n, edge + fade)) if after else (max(0, edge - fade), edge)
            if hi <= lo:
                continue
            ramp = (np.arange(hi - lo, dtype=np.float32) + 0.5) / (hi - lo)
            toward_model = ramp[::-1] if after else ramp
            out[lo:hi] = (1 - toward_model) * original[lo:hi] + toward_model * decoded[lo:hi]
    return out
