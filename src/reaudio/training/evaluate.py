"""``reaudio eval``: generate for a test manifest with a bundle and score FAD, KL, IS, CLAP score.

Also the long-tail report (CLAP score per training-frequency bucket of the
clip's label, as the paper's Figure 4) and the ablation table (the paper's
Table 1 layout) over several bundles and/or k values.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from reaudio.engine.audio.audio_io import load_audio
from reaudio.engine.pipeline import Engine, Request

from .backbones import embed_at, load_backbone
from .band_measures import top_band_levels
from .data import read_corpus
from .listening import listener_metrics, neighbour_label_scores
from .metrics import (
    FREQUENCY_BUCKETS,
    clap_score,
    fad,
    frequency_bucket,
    inception_score,
    kl_paired,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation.

    Attributes:
        bundle: the model bundle to generate with.
        data: clip manifest; ``split`` clips are the test set, ``train`` clips train the label
            classifier and count label frequencies.
        out: folder for results.json, report.md and the long-tail PNG.
        k: neighbours per prompt (None: the bundle's default).
        steps, guidance, sampler: sampler settings (None: the bundle's defaults).
        seed: clip i is generated with seed + i.
        limit: score at most this many test clips, evenly spaced over the split.
        backbone: "aisfx", "clap" or "package.module:factory".
        min_label_clips: labels with fewer training clips are left out of the classifier.
        retrieval: neighbour search mode for generation (None: the bundle's).
        neighbour_context: what the neighbours bring: "both", "captions" or "audio" (None: both).
        init, strength: start each clip from its top neighbour's audio ("neighbour") at this
            strength (see ``Request``); the manifest's folder is the items' audio root.
        candidates: best-of-N by CLAP score (1: plain generation).
        threads: onnxruntime threads for generation (None: all cores); fewer leave cores to a
            training run beside it (both spinning on all cores slows each several-fold).
        progress: a progress bar over the clips as they are generated (stderr), and a log line
            per scoring phase.
    """

    bundle: Path
    data: Path
    out: Path
    split: str = "test"
    k: int | None = None
    steps: int | None = None
    guidance: float | None = None
    sampler: str | None = None
    seed: int = 0
    limit: int | None = None
    backbone: str = "aisfx"
    min_label_clips: int = 5
    backend: str = "auto"
    precision: str = "auto"
    retrieval: str | None = None
    neighbour_context: str | None = None
    init: str | None = None
    strength: float | None = None
    candidates: int = 1
    threads: int | None = None
    progress: bool = True
    bundle_name: str = field(default="")
    score_rate: int | None = None


def train_label_classifier(embeddings: np.ndarray, labels: list[str], seed: int = 0, steps: int = 500):
    """Softmax regression on standardised embeddings; returns (predict_proba, classes)."""
    classes = sorted(set(labels))
    x = torch.from_numpy(np.asarray(embeddings, dtype=np.float32))
    mean, std = x.mean(0), x.std(0) + 1e-6
    y = torch.tensor([classes.index(lab) for lab in labels])
    torch.manual_seed(seed)
    layer = torch.nn.Linear(x.shape[1], len(classes))
    opt = torch.optim.Adam(layer.parameters(), lr=0.05, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(layer((x - mean) / std), y).backward()
        opt.step()

    def predict_proba(e: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            z = (torch.from_numpy(np.asarray(e, dtype=np.float32)) - mean) / std
            return torch.softmax(layer(z), dim=1).numpy()

    return predict_proba, classes


def evenly_spaced(items: list, limit: int | None) -> list:
    """At most ``limit`` items, evenly spaced (manifests are often grouped by source)."""
    if not limit or len(items) <= limit:
        return list(items)
    return [items[round(i * len(items) / limit)] for i in range(limit)]


def real_file(clip, sample_rate: int, mel_rate: int) -> Path:
    """The file of ``clip`` to score at ``sample_rate`` against: its full-band copy when that is above
    the models' mel rate and the corpus kept one, else its usual file — full-band output is judged
    against what real clips hold up there, not against their 22.05-kHz copies."""
    if clip.fullband is not None and sample_rate > mel_rate:
        return clip.fullband
    return clip.audio


def _at(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target or not len(wave):
        return wave
    import soxr

    return soxr.resample(wave, rate, target, quality="HQ").astype(np.float32)


def evaluate(cfg: EvalConfig) -> dict:
    start = time.perf_counter()
    clips = read_corpus(cfg.data)
    split = [c for c in clips if c.split == cfg.split]
    test = evenly_spaced(split, cfg.limit)
    train = [c for c in clips if c.split == "train"]
    if len(test) < 2:
        raise ValueError(f"{cfg.data}: need at least 2 '{cfg.split}' clips to score, found {len(test)}")
    engine = Engine.from_bundle(
        cfg.bundle,
        backend=cfg.backend,
        precision=cfg.precision,
        threads=cfg.threads,
        audio_root=Path(cfg.data).parent,
    )
    # Scored at the bundle's rate, or at --score-rate (two bundles of different rates on one scale).
    sr, mel_rate = cfg.score_rate or engine.sample_rate, engine.manifest.mel.sample_rate
    real = [load_audio(real_file(c, sr, mel_rate), sr) for c in test]
    durations = [min(max(len(w) / sr, 0.5), engine.manifest.defaults.duration) for w in real]
    requests = [
        Request(
            c.caption,
            duration=d,
            seed=cfg.seed + i,
            steps=cfg.steps,
            guidance=cfg.guidance,
            sampler=cfg.sampler,
            k=cfg.k,
            retrieval=cfg.retrieval,
            neighbour_context=cfg.neighbour_context,
            init=cfg.init,
            strength=cfg.strength,
        )
        for i, (c, d) in enumerate(zip(test, durations))
    ]
    results = [
        replace(r, waveform=_at(r.waveform, r.sample_rate, sr)) if r.ok else r for r in _generate(engine, requests, cfg)
    ]
    log.info("scoring %d clips: embeddings, copy and real references, label classifier, CLAP", len(results))
    failed = [c.id for c, r in zip(test, results) if not r.ok]
    pairs = [(c, w[: len(r.waveform)], r.waveform) for c, w, r in zip(test, real, results) if r.ok]
    if len(pairs) < 2:
        raise RuntimeError(f"only {len(pairs)} clip(s) generated; failures: {failed}")
    backbone = load_backbone(cfg.backbone)
    real_emb = _cached(
        ("real", backbone.name, sr, tuple((p[0].id, len(p[1])) for p in pairs)),
        lambda: embed_at(backbone, [p[1] for p in pairs], sr),
        [real_file(p[0], sr, mel_rate) for p in pairs],
    )
    gen_emb = embed_at(backbone, [p[2] for p in pairs], sr)
    metrics = {"clips": len(pairs), "failed": failed, "backbone": backbone.name, "fad": fad(real_emb, gen_emb)}
    metrics.update(listener_metrics([p[2] for p in pairs], [p[1] for p in pairs], gen_emb, real_emb, sr))
    metrics.update(_references(cfg, engine, backbone, pairs, real_emb, clips, [c for c in split if c not in test], sr))
    metrics.update(_top1_similarity(engine, backbone, pairs, gen_emb, clips, sr))
    if sr > mel_rate:
        metrics["top_band"] = top_band_levels([p[2] for p in pairs], [p[1] for p in pairs], sr)

    counts: dict[str, int] = {}
    for c in train:
        counts[c.label] = counts.get(c.label, 0) + 1
    usable = [c for c in train if c.label and counts[c.label] >= cfg.min_label_clips]
    if len({c.label for c in usable}) >= 2:
        train_emb = _cached(
            ("train", backbone.name, sr, tuple(c.id for c in usable)),
            lambda: embed_at(backbone, [load_audio(real_file(c, sr, mel_rate), sr) for c in usable], sr),
            [real_file(c, sr, mel_rate) for c in usable],
        )
        proba, classes = train_label_classifier(train_emb, [c.label for c in usable], cfg.seed)
        metrics.update(
            kl=kl_paired(proba(real_emb), proba(gen_emb)),
            inception_score=inception_score(proba(gen_emb)),
            classifier_labels=len(classes),
        )
    else:
        log.warning("fewer than 2 labels with >= %d training clips: KL and IS skipped", cfg.min_label_clips)

    text_emb, _, _ = engine.embed_text([p[0].caption for p in pairs])
    audio_emb, _ = engine.encode_audio([_at(p[2], sr, engine.sample_rate) for p in pairs])
    per_clip = np.sum(audio_emb * text_emb, axis=1)
    metrics["clap_score"] = clap_score(audio_emb, text_emb)
    buckets: dict[str, list[float]] = {}
    for (clip, _, _), score in zip(pairs, per_clip):
        buckets.setdefault(frequency_bucket(counts.get(clip.label, 0)), []).append(float(score))
    metrics["long_tail"] = {
        name: {"clips": len(buckets[name]), "clap_score": float(np.mean(buckets[name]))}
        for _, _, name in FREQUENCY_BUCKETS
        if name in buckets
    }
    metrics["seconds"] = time.perf_counter() - start
    metrics["settings"] = {
        "bundle": str(cfg.bundle),
        "k": cfg.k,
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "sampler": cfg.sampler or engine.manifest.defaults.sampler,
        "seed": cfg.seed,
        "split": cfg.split,
        "retrieval": cfg.retrieval or engine.planner.default_retrieval,
        "neighbour_context": cfg.neighbour_context or "both",
        "init": cfg.init,
        "strength": cfg.strength,
        "candidates": cfg.candidates,
        "score_rate": sr,
        # What made the clips: a score compares precisions only when it says which one it scored.
        "backend": engine.backend,
        "stage_precision": dict(engine.stage_precision),
    }
    write_report(cfg.out, metrics)
    log.info("scored %d clips in %.1f s", len(pairs), metrics["seconds"])
    return metrics


def _generate(engine: Engine, requests: list[Request], cfg: EvalConfig) -> list:
    """Each request's clip (best of ``cfg.candidates``), in request order, with a bar as they finish."""
    from tqdm import tqdm

    from reaudio.engine.jobs.candidates import stream_ranked

    results: list = [None] * len(requests)
    label = "generating" if cfg.candidates == 1 else f"generating (best of {cfg.candidates})"
    with tqdm(total=len(requests), unit="clip", desc=label, disable=not cfg.progress, dynamic_ncols=True) as bar:
        for i, ranked in stream_ranked(engine, requests, [cfg.candidates] * len(requests)):
            results[i] = ranked.best
            bar.update(1)
    return results


def _references(
    cfg: EvalConfig, engine: Engine, backbone, pairs: list, real_emb: np.ndarray, clips: list, others: list, sr: int
) -> dict:
    """Neighbour label precision per retrieval mode, the copy-the-top-1-neighbour baseline and
    the real-vs-real floor, on the same clips as the generated ones, at ``sr``."""
    out: dict = {}
    mel_rate = engine.manifest.mel.sample_rate
    if engine.db is not None and len(engine.db):
        text_emb, _, _ = engine.embed_text([p[0].caption for p in pairs])
        labels = [p[0].label for p in pairs]
        out["retrieval"] = {}
        top1: np.ndarray | None = None
        for mode in engine.db.info.modes:
            rows = engine.db.search(text_emb, 3, mode=mode)
            found = [[engine.db.items[r].get("label", "") for r in row if r >= 0] for row in rows]
            out["retrieval"][mode] = neighbour_label_scores(labels, found, 1) | neighbour_label_scores(labels, found, 3)
            if mode == (cfg.retrieval or engine.planner.default_retrieval):
                top1 = rows[:, 0]
        audio_of = {c.id: real_file(c, sr, mel_rate) for c in clips}
        if top1 is not None and all(r >= 0 and engine.db.items[r]["id"] in audio_of for r in top1):
            copies = [load_audio(audio_of[engine.db.items[r]["id"]], sr)[: len(p[1])] for r, p in zip(top1, pairs)]
            copy_emb = embed_at(backbone, copies, sr)
            out["copy_top1"] = {"fad": fad(real_emb, copy_emb)} | listener_metrics(
                copies, [p[1] for p in pairs], copy_emb, real_emb, sr
            )
            decoded = _through_decoder(engine, copies, sr)
            if decoded is not None:
                decoded_emb = embed_at(backbone, decoded, sr)
                out["copy_decoded"] = {"fad": fad(real_emb, decoded_emb)} | listener_metrics(
                    decoded, [p[1] for p in pairs], decoded_emb, real_emb, sr
                )
        else:
            log.warning("top-1 neighbours are not all clips of %s: copy baseline skipped", cfg.data)
    floor = evenly_spaced(others, len(pairs))
    if len(floor) >= 2:
        floor_emb = _cached(
            ("floor", backbone.name, sr, tuple(c.id for c in floor)),
            lambda: embed_at(backbone, [load_audio(real_file(c, sr, mel_rate), sr) for c in floor], sr),
            [real_file(c, sr, mel_rate) for c in floor],
        )
        out["real_floor"] = {"fad": fad(real_emb, floor_emb), "clips": len(floor)}
    else:
        log.warning("fewer than 2 other '%s' clips: real-vs-real floor skipped (use --limit)", cfg.split)
    return out


def _through_decoder(engine: Engine, waveforms: list[np.ndarray], sr: int) -> list[np.ndarray] | None:
    """Each clip (at ``sr``) encoded into the bundle's latent space and decoded back (VAE decoder and
    vocoder): what copying the neighbour would score if it had to come out of this model's decoder,
    the best a denoiser that found the neighbour's exact latent could do. None without a VAE encoder."""
    if "vae_encoder" not in engine.runners:
        return None
    decoded = []
    for clip in waveforms:
        wave = _at(clip, sr, engine.sample_rate)
        frames = -(-len(wave) // engine.manifest.samples_per_frame)
        latent = engine.encode_latents([wave], frames)
        back = engine.runners["decoder"].run({"latent": latent})[0][0, : len(wave)]
        decoded.append(_at(back, engine.sample_rate, sr)[: len(clip)])
    return decoded


def _top1_similarity(engine: Engine, backbone, pairs: list, gen_emb: np.ndarray, clips: list, sr: int) -> dict:
    """How close each generated clip is to the real top-1 neighbour of its prompt (cosine of the
    backbone's embeddings, averaged): 1.0 for copying it; a neighbour-seeded clip's start clip."""
    if engine.db is None or not len(engine.db):
        return {}
    audio_of = {c.id: real_file(c, sr, engine.manifest.mel.sample_rate) for c in clips}
    text_emb, _, _ = engine.embed_text([p[0].caption for p in pairs])
    rows = engine.db.search(text_emb, 1, mode=engine.planner.default_retrieval)[:, 0]
    if not all(r >= 0 and engine.db.items[r]["id"] in audio_of for r in rows):
        return {}
    top = embed_at(
        backbone, [load_audio(audio_of[engine.db.items[r]["id"]], sr)[: len(p[2])] for r, p in zip(rows, pairs)], sr
    )
    a = gen_emb / np.linalg.norm(gen_emb, axis=1, keepdims=True)
    b = top / np.linalg.norm(top, axis=1, keepdims=True)
    return {"top1_similarity": float(np.mean(np.sum(a * b, axis=1)))}


#: Embeddings of real clips, shared by the evaluations of one process (an ablation scores the
#: same real clips at every k; only the generated ones change) and kept on disk between runs
#: (the classifier's thousands of training clips cost minutes to embed on a CPU).
_EMBEDDINGS: dict[tuple, np.ndarray] = {}


def _cached(key: tuple, compute, files: list[Path] = ()) -> np.ndarray:
    """``compute()``, memoised in this process and on disk under the cache root; ``files`` (the
    audio read) are part of the key by size and modification time, so an edited clip is re-embedded."""
    import hashlib

    from reaudio.engine.bundle.dataclass_io import atomic_path
    from reaudio.engine.bundle.default_model import cache_root

    if key not in _EMBEDDINGS:
        stamp = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        digest = hashlib.sha256(repr((key, stamp)).encode()).hexdigest()[:32]
        path = cache_root() / "eval-embeddings" / f"{digest}.npy"
        if path.is_file():
            _EMBEDDINGS[key] = np.load(path)
        else:
            _EMBEDDINGS[key] = compute()
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, _EMBEDDINGS[key])
    return _EMBEDDINGS[key]


def write_report(out: Path, metrics: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    lines = [
        "| metric | generated | copy top-1 neighbour | copy through the decoder | real vs real |",
        "| --- | --- | --- | --- | --- |",
    ]
    copy, floor = metrics.get("copy_top1", {}), metrics.get("real_floor", {})
    decoded = metrics.get("copy_decoded", {})
    for key in (
        "fad",
        "kl",
        "inception_score",
        "clap_score",
        "clipped_clips",
        "median_rms_dbfs",
        "envelope_correlation",
        "paired_minus_unpaired",
        "top1_similarity",
    ):
        if key in metrics:
            cells = [_cell(metrics.get(key)), _cell(copy.get(key)), _cell(decoded.get(key)), _cell(floor.get(key))]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines.append(f"| clips | {metrics['clips']} | | | {floor.get('clips', '')} |")
    if metrics.get("retrieval"):
        lines += ["", "| retrieval mode | precision@1 | precision@3 | hit@3 |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {mode} | {_cell(v.get('precision@1'))} | {_cell(v.get('precision@3'))} | {_cell(v.get('hit@3'))} |"
            for mode, v in metrics["retrieval"].items()
        ]
    lines += ["", "| training clips of the label | test clips | CLAP score |", "| --- | --- | --- |"]
    lines += [f"| {name} | {v['clips']} | {v['clap_score']:.4f} |" for name, v in metrics["long_tail"].items()]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: long-tail PNG skipped (pip install matplotlib)")
        return
    names = list(metrics["long_tail"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, [metrics["long_tail"][n]["clap_score"] for n in names], color="#4c72b0")
    ax.set_xlabel("training clips of the label")
    ax.set_ylabel("CLAP score")
    ax.set_title("CLAP score by label frequency")
    fig.tight_layout()
    fig.savefig(out / "long_tail.png", dpi=120)
    plt.close(fig)


def _cell(value) -> str:
    return "—" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def ablation(rows: list[tuple[str, EvalConfig]], out: Path) -> str:
    """Evaluate each (name, config) and write the paper's Table 1 layout as Markdown."""
    keys = (
        "kl",
        "inception_score",
        "fad",
        "clap_score",
        "clipped_clips",
        "envelope_correlation",
        "paired_minus_unpaired",
        "top1_similarity",
        "seconds",
    )
    lines = [
        "| setting | KL ↓ | IS ↑ | FAD ↓ | CLAP ↑ | clipped ↓ | envelope r ↑ | paired − unpaired ↑ "
        "| similarity to top-1 | eval s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    m: dict = {}
    for name, cfg in rows:
        m = evaluate(cfg)
        lines.append(f"| {name} | " + " | ".join(f"{m[key]:.3f}" if key in m else "—" for key in keys) + " |")
    references = (
        ("copy the top-1 neighbour", m.get("copy_top1")),
        ("copy through the decoder", m.get("copy_decoded")),
        ("real vs real (floor)", m.get("real_floor")),
    )
    for name, ref in references:
        if ref:
            lines.append(f"| {name} | " + " | ".join(f"{ref[key]:.3f}" if key in ref else "—" for key in keys) + " |")
    table = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.md").write_text(table, encoding="utf-8")
    return table
