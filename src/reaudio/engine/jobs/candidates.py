"""Several tries per clip, ranked by the bundle's CLAP (text–audio cosine of prompt and clip).

Candidate 0 of a clip uses the clip's own seed, so best-of-1 is plain generation; candidate j
adds j · 2³² to it, far from the next variation's seed (variations count up by one).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..bundle.manifest import BundleManifest
from ..pipeline import Engine, Result
from ..planning import Request

SEED_STRIDE = 2**32


def candidate_seed(seed: int, j: int) -> int:
    return (seed + j * SEED_STRIDE) % 2**63


def candidate_id(request_id: str | None, j: int) -> str:
    return f"{request_id}~c{j}"


@dataclass
class Ranked:
    """The candidates of one request, best first (failed ones last, score None)."""

    request: Request
    results: list[Result]
    scores: list[float | None]

    @property
    def best(self) -> Result:
        return self.results[0]


def clap_scores(engine: Engine, prompts: list[str], waves: list[np.ndarray]) -> np.ndarray:
    """Cosine of each prompt's CLAP text embedding with its clip's CLAP audio embedding."""
    text, _, _ = engine.embed_text(prompts)
    audio, _ = engine.encode_audio(waves)
    return np.sum(text * audio, axis=1)


def check_rankable(manifest: BundleManifest, n: int, bundle: Path) -> None:
    """Refuse ``n`` > 1 candidates for a bundle without the CLAP audio encoder that ranks them."""
    if n > 1 and "audio_encoder" not in manifest.stages:
        raise ValueError(
            f"--candidates {n}: {bundle} has no CLAP audio encoder to rank clips with "
            "(an imported model without our CLAP); use --candidates 1"
        )


def expand(requests: list[Request], counts: list[int]) -> list[Request]:
    """Each request repeated ``counts[i]`` times with candidate seeds and ids (one stays as it is)."""
    out = []
    for i, (request, n) in enumerate(zip(requests, counts)):
        base = request.id if request.id is not None else str(i)
        if n == 1:
            out.append(request)
        else:
            out += [replace(request, seed=candidate_seed(request.seed, j), id=candidate_id(base, j)) for j in range(n)]
    return out


def rank(engine: Engine, request: Request, results: list[Result]) -> Ranked:
    ok = [r for r in results if r.ok]
    scores = clap_scores(engine, [request.prompt] * len(ok), [r.waveform for r in ok]) if ok else np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    ranked = [ok[i] for i in order] + [r for r in results if not r.ok]
    return Ranked(request, ranked, [float(scores[i]) for i in order] + [None] * (len(results) - len(ok)))


def rank_stream(
    indexed: Iterable[tuple[int, Result]], requests: list[Request], counts: list[int], ranker: Engine | None
) -> Iterator[tuple[int, Ranked]]:
    """Group the results of :func:`expand`'s requests (``indexed``: (position, result), in any order)
    back into their requests, and yield (request index, ranking) as soon as a request's last candidate
    is in. Candidates are ranked in candidate order by ``ranker``'s CLAP; a position delivered twice
    (a retried batch) counts once."""
    owner = [i for i, n in enumerate(counts) for _ in range(n)]
    pending: dict[int, dict[int, Result]] = {}
    done: set[int] = set()
    for position, result in indexed:
        i = owner[position]
        if i in done:
            continue
        pending.setdefault(i, {}).setdefault(position, result)
        if len(pending[i]) == counts[i]:
            got = [result for _, result in sorted(pending.pop(i).items())]
            done.add(i)
            yield i, rank(ranker, requests[i], got) if counts[i] > 1 else Ranked(requests[i], got, [None])


def stream_ranked(
    engine: Engine, requests: list[Request], counts: list[int], batch_size: int = 8
) -> Iterator[tuple[int, Ranked]]:
    """Generate every request's candidates (they share batches) and yield (request index, ranking)
    as soon as a request's last candidate is done."""
    check_rankable(engine.manifest, max(counts, default=1), engine.bundle)
    expanded = expand(requests, counts)
    yield from rank_stream(engine.stream_indexed(expanded, batch_size=batch_size), requests, counts, engine)


def generate_ranked(engine: Engine, requests: Iterable[Request], n: int, batch_size: int = 8) -> list[Ranked]:
    """Best-of-``n`` for every request, in request order."""
    requests = list(requests)
    out = dict(stream_ranked(engine, requests, [n] * len(requests), batch_size))
    return [out[i] for i in range(len(requests))]
