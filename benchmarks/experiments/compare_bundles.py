"""Two bundles of one model (e.g. the int8 default pack's assembly vs the fp32 export), same
requests: waveform SNR and log-mel L1 of B against A, and each one's level.

    python benchmarks/experiments/compare_bundles.py BUNDLE_A BUNDLE_B CORPUS/manifest.jsonl [--clips 16] [--steps 25]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from reaudio.engine.audio.frontend import log_mel
from reaudio.engine.pipeline import Engine, Request
from reaudio.training.data import read_corpus


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("manifest", type=Path)
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float, help="default: bundle A's (both bundles generate with the same)")
    args = p.parse_args()
    test = [c for c in read_corpus(args.manifest) if c.split == "test"]
    captions = [test[round(i * len(test) / args.clips)].caption for i in range(args.clips)]
    a = Engine.from_bundle(args.a, backend="cpu")
    guidance = args.guidance if args.guidance is not None else a.manifest.defaults.guidance
    requests = [Request(c, duration=4.0, seed=i, steps=args.steps, guidance=guidance) for i, c in enumerate(captions)]
    wa = [r.waveform for r in a.generate(requests)]
    b = Engine.from_bundle(args.b, backend="cpu")
    wb = [r.waveform for r in b.generate(requests)]
    snr = [10 * np.log10(np.sum(x**2) / max(np.sum((x - y) ** 2), 1e-20)) for x, y in zip(wa, wb)]
    mel_l1 = [float(np.abs(log_mel(x, a.manifest.mel) - log_mel(y, a.manifest.mel)).mean()) for x, y in zip(wa, wb)]
    rms = lambda ws: float(np.median([20 * np.log10(np.sqrt(np.mean(w.astype(np.float64) ** 2)) + 1e-12) for w in ws]))  # noqa: E731
    print(
        json.dumps(
            {
                "clips": len(captions),
                "guidance": guidance,
                "snr_db_median": float(np.median(snr)),
                "snr_db_min": float(np.min(snr)),
                "log_mel_l1_mean": float(np.mean(mel_l1)),
                "median_rms_dbfs_a": rms(wa),
                "median_rms_dbfs_b": rms(wb),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
