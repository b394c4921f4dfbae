"""Which convolutions int8 may take: a per-layer sensitivity pass.

Every convolution of the default model's UNet in int8 cost the denoiser's data prediction (x0)
most of its precision (SNR 13.8 dB over the calibration inputs, 6 dB on the worst) and the sound
with it (FAD 207.4 against 165.1 in fp32 on the 100 test captions, 2026-12-07). Layers are not equally sensitive: a few
carry the rounding into every later step. So each convolution is quantised alone, on the ranges
of one shared calibration (onnxruntime's calibration cache), and the stage's output SNR against
fp32 says what that layer costs; then the fewest of the most sensitive stay fp32 such that the
whole graph, the rest quantised, reaches the target SNR.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reaudio.engine.jobs.tuning import stage_snr_db

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sensitivity:
    """The pass's result for one graph.

    Attributes:
        layer_snr_db: each candidate node's output SNR (dB) with only that node in int8.
        kept_fp32: the nodes left in fp32, most sensitive first.
        snr_db: the output SNR of the graph written (the rest in int8).
        all_int8_snr_db: the output SNR with every candidate in int8 (what the pass improved on).
    """

    layer_snr_db: dict[str, float]
    kept_fp32: tuple[str, ...]
    snr_db: float
    all_int8_snr_db: float

    def to_dict(self) -> dict:
        return {
            "snr_db": round(self.snr_db, 2),
            "all_int8_snr_db": round(self.all_int8_snr_db, 2),
            "kept_fp32": list(self.kept_fp32),
            "layers": len(self.layer_snr_db),
            "layer_snr_db": {k: round(v, 2) for k, v in self.layer_snr_db.items()},
        }


class _GraphScorer:
    """Runs a graph on fixed inputs and scores one output against the fp32 graph's."""

    def __init__(self, fp32: Path, feeds: list[dict], output: str, threads: int | None) -> None:
        from reaudio.engine.stages.backends import OrtRunner

        self.feeds, self.threads = feeds, threads
        session = OrtRunner.session_for(fp32, ["CPUExecutionProvider"], threads)
        self.names = [o.name for o in session.get_outputs()]
        if output not in self.names:
            raise ValueError(f"{fp32}: no output {output!r}; outputs: {', '.join(self.names)}")
        self.index = self.names.index(output)
        self.reference = [session.run(self.names, f) for f in feeds]

    def snr_db(self, graph: Path) -> float:
        from reaudio.engine.stages.backends import OrtRunner

        session = OrtRunner.session_for(graph, ["CPUExecutionProvider"], self.threads)
        return stage_snr_db(self.reference, [session.run(self.names, f) for f in self.feeds], self.index)


def sensitivity_pass(
    src: Path,
    dst: Path,
    score_feeds: list[dict],
    candidates: list[str],
    quantize: Callable[[Path, list[str], Path], Path],
    output: str,
    target_db: float,
    threads: int | None = None,
    progress: Callable[[str], None] = log.info,
) -> Sensitivity:
    """Write to ``dst`` the int8 graph of ``src`` that quantises the most of ``candidates`` while
    its ``output`` keeps ``target_db`` of SNR against fp32 on ``score_feeds``.

    ``quantize(dst, nodes, cache)`` writes ``src`` with only ``nodes`` (never empty) in int8,
    calibrated once with the ranges cached in ``cache``; it is called once per candidate and a few
    times more for the search. The search keeps the k most sensitive in fp32 for the smallest k
    that reaches the target (bisection: SNR grows with k; the result is scored again). When only
    keeping every candidate reaches it, nothing is written and ``kept_fp32`` names them all.
    """
    scorer = _GraphScorer(src, score_feeds, output, threads)
    with tempfile.TemporaryDirectory(prefix="reaudio-int8-") as tmp:
        work = Path(tmp)
        cache = work / "ranges.calib"
        trial = work / "trial.onnx"
        layer_snr: dict[str, float] = {}
        for i, node in enumerate(candidates):
            layer_snr[node] = scorer.snr_db(quantize(trial, [node], cache))
            if (i + 1) % 10 == 0 or i + 1 == len(candidates):
                progress(f"sensitivity: {i + 1}/{len(candidates)} layers quantised one at a time")
        ranked = sorted(candidates, key=lambda n: layer_snr[n])

        def snr_keeping(k: int) -> float:
            kept = set(ranked[:k])
            return scorer.snr_db(quantize(trial, [n for n in candidates if n not in kept], cache))

        all_int8 = snr_keeping(0)
        progress(f"sensitivity: every layer in int8 → {output} SNR {all_int8:.1f} dB (target {target_db:g} dB)")
        lo, hi = 0, len(ranked)  # invariant: keeping hi reaches the target (keeping all is fp32)
        if all_int8 >= target_db:
            hi = 0
        else:
            lo = 1
            while lo < hi:
                mid = (lo + hi) // 2
                snr = snr_keeping(mid)
                progress(f"sensitivity: {mid} most sensitive kept fp32 → {snr:.1f} dB")
                if snr >= target_db:
                    hi = mid
                else:
                    lo = mid + 1
        kept = ranked[:hi]
        rest = [n for n in candidates if n not in set(kept)]
        final = scorer.snr_db(quantize(dst, rest, cache)) if rest else float("inf")
    return Sensitivity(layer_snr, tuple(kept), final, all_int8)
