"""Bring your own sounds: add (audio, caption) clips to a bundle's retrieval database."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ..audio.audio_io import AudioLoadError, load_audio
from ..bundle.manifest import read_bundle_manifest, write_bundle_manifest
from ..pipeline import Engine
from ..retrieval.database import Items, RetrievalDB, stale_generations
from ..settings import MAX_TEXT_CHARS
from .prompts import ID_PATTERN, slugify
from .records import read_records

log = logging.getLogger(__name__)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
#: Longer clips are encoded from their first this-many seconds (their recorded duration too).
MAX_ADD_SECONDS = 30


@dataclass(frozen=True)
class ClipSpec:
    audio: Path
    caption: str
    id: str
    label: str = ""
    where: str = ""


class ClipListError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} problem(s) with the clips:\n" + "\n".join("  " + p for p in problems))
        self.problems = problems


def read_clip_list(source: str | Path) -> list[ClipSpec]:
    """Clips from a CSV/JSONL (audio, caption[, id, label]) or a folder of audio with ``.txt`` sidecars."""
    source = Path(source)
    problems: list[str] = []
    clips: list[ClipSpec] = []
    if source.is_dir():
        for audio in sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
            sidecar = audio.with_suffix(".txt")
            if not sidecar.is_file():
                problems.append(f"{audio}: no caption file {sidecar.name} beside it")
                continue
            try:
                caption = " ".join(sidecar.read_text(encoding="utf-8").split())
            except UnicodeDecodeError as exc:
                problems.append(f"{sidecar}: not valid UTF-8 (byte {exc.start}); save the caption as UTF-8")
                continue
            clips.append(
                ClipSpec(
                    audio, caption, slugify(audio.relative_to(source).with_suffix("").as_posix()), where=str(sidecar)
                )
            )
    elif source.suffix.lower() in (".csv", ".jsonl") and source.is_file():
        records = read_records(source, ("audio", "caption"), problems)
        for line, rec in records:
            where = f"{source}:{line}"
            audio = Path(str(rec.get("audio", "")).strip())
            if not str(audio) or str(audio) == ".":
                problems.append(f"{where}: missing 'audio' path")
                continue
            if not audio.is_absolute():
                audio = source.parent / audio
            clip_id = str(rec.get("id") or slugify(audio.stem))
            if not ID_PATTERN.match(clip_id):
                problems.append(f"{where}: id {clip_id!r} must use letters, digits, '.', '_', '-'")
                continue
            clips.append(
                ClipSpec(
                    audio, " ".join(str(rec.get("caption", "")).split()), clip_id, str(rec.get("label", "")), where
                )
            )
    else:
        raise ClipListError([f"{source}: give a .csv or .jsonl file or a folder of audio with .txt captions"])
    seen: dict[str, str] = {}
    for clip in clips:
        if not clip.caption:
            problems.append(f"{clip.where}: empty caption")
        elif len(clip.caption) > MAX_TEXT_CHARS or "\0" in clip.caption:
            what = "holds a NUL character" if "\0" in clip.caption else f"is {len(clip.caption)} characters long"
            problems.append(
                f"{clip.where}: the caption {what}; captions are text of at most {MAX_TEXT_CHARS} characters"
            )
        if not clip.audio.is_file():
            problems.append(f"{clip.where}: audio file {clip.audio} not found")
        if clip.id in seen:
            problems.append(f"{clip.where}: duplicate id {clip.id!r} (also {seen[clip.id]})")
        seen.setdefault(clip.id, clip.where)
    if not clips and not problems:
        problems.append(f"{source}: no clips found")
    if problems:
        raise ClipListError(problems)
    return clips


def add_clips(bundle: str | Path, clips: list[ClipSpec], backend: str = "cpu") -> RetrievalDB:
    """Encode ``clips`` with the bundle's own encoders and add them to its database."""
    bundle = Path(bundle)
    engine = Engine.from_bundle(bundle, backend=backend)
    spec = engine.manifest.retrieval
    if spec is None or engine.db is None:
        raise ValueError(f"{bundle}: this bundle's model uses no retrieval; there is no database to add to")
    problems, waves = [], []
    limit = round(MAX_ADD_SECONDS * engine.sample_rate)
    for clip in clips:
        try:
            # The encoders' cost grows with length (an hour asks onnxruntime for ~100 GB): the
            # opening MAX_ADD_SECONDS stand for the clip, and only they are read from the file.
            wav = load_audio(clip.audio, engine.sample_rate, max_seconds=MAX_ADD_SECONDS)
            seconds = sf.info(str(clip.audio)).duration
        except (AudioLoadError, sf.LibsndfileError) as exc:
            problems.append(f"{clip.where}: {exc}")
            continue
        if seconds > MAX_ADD_SECONDS:
            log.warning(
                "%s: %s is %.0f s long; its first %d s are encoded",
                clip.where or clip.id,
                clip.audio,
                seconds,
                MAX_ADD_SECONDS,
            )
        wav = wav[:limit]
        waves.append(wav)
    if problems:
        raise ClipListError(problems)
    _warn_suspicious(clips, waves)
    embs, tokens = [], []
    for clip, wav in zip(clips, waves):
        try:
            emb, tok = engine.encode_audio([wav])
        except Exception as exc:  # onnxruntime's message names no file: add ours
            problems.append(
                f"{clip.where or clip.audio}: the audio encoder cannot take this clip "
                f"({len(wav) / engine.sample_rate:.3f} s): {str(exc).splitlines()[0][:200]}"
            )
            continue
        embs.append(emb)
        tokens.append(tok)
    if problems:
        raise ClipListError(problems)
    audio_emb, audio_tokens = np.concatenate(embs), np.concatenate(tokens)
    captions = [c.caption for c in clips]
    _, cap_tokens, cap_mask = engine.embed_text(captions, length=spec.caption_tokens)
    # Keys at the prompt's token length: a caption cut to the context's L tokens embeds differently.
    text_emb, _, _ = engine.embed_text(captions)
    info = engine.db.info
    keys = audio_emb if info.key == "audio" else text_emb
    records = [
        {
            "id": c.id,
            "caption": c.caption,
            "label": c.label,
            "source": str(c.audio),
            "audio": str(Path(c.audio).resolve()),
            "duration": round(len(w) / engine.sample_rate, 3),
        }
        for c, w in zip(clips, waves)
    ]
    cap_tokens = cap_tokens * cap_mask[..., None]
    # One rename commits the change; the database checks itself (manifest.json is not touched).
    return engine.db.add(
        Items(records, keys, audio_tokens, cap_tokens, cap_mask, text_emb if info.caption_keys else None)
    )


def _warn_suspicious(clips: list[ClipSpec], waves: list) -> None:
    """Silent clips and clips with identical audio are added, but said."""
    import hashlib

    seen: dict[str, str] = {}
    for clip, wav in zip(clips, waves):
        if not len(wav) or float(np.max(np.abs(wav))) < 1e-3:  # below -60 dBFS
            log.warning("%s: %s is silent (peak below -60 dBFS); added anyway", clip.where or clip.id, clip.audio)
        digest = hashlib.sha256(np.ascontiguousarray(wav).tobytes()).hexdigest()
        if digest in seen:
            log.warning(
                "%s: %s has the same audio as clip %r; added anyway", clip.where or clip.id, clip.audio, seen[digest]
            )
        seen.setdefault(digest, clip.id)


def remove_clips(bundle: str | Path, ids: list[str]) -> RetrievalDB:
    bundle = Path(bundle)
    manifest = read_bundle_manifest(bundle)
    if manifest.retrieval is None:
        raise ValueError(f"{bundle}: this bundle's model uses no retrieval")
    return RetrievalDB(bundle / manifest.retrieval.folder).remove(ids)


def repair(bundle: str | Path) -> str:
    """Make a bundle whose database changed under an older reaudio (``manifest.json`` listing the
    database's files, a change interrupted before the rehash) load again: every other file must
    still match the manifest; the database must open whole; then the manifest is rewritten
    without the database's files and the live generation gets its own checksums."""
    bundle = Path(bundle)
    manifest = read_bundle_manifest(bundle, verify=True)  # verifies all but the database
    if manifest.retrieval is None:
        return f"{bundle}: no retrieval database; nothing to repair"
    folder = bundle / manifest.retrieval.folder
    stale = stale_generations(folder)  # a killed change's leftovers would stop the next one
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    db = RetrievalDB(folder)
    had = db.verify_checksums()
    if not had:
        from ..bundle.dataclass_io import write_json_atomic
        from ..bundle.manifest import sha256_file
        from ..retrieval.database import CHECKSUMS

        write_json_atomic(
            db.generation / CHECKSUMS,
            {p.name: sha256_file(p) for p in sorted(db.generation.iterdir()) if p.is_file() and p.name != CHECKSUMS},
        )
    write_bundle_manifest(bundle, manifest)
    cleaned = f"; removed {len(stale)} folder(s) a killed change left" if stale else ""
    return (
        f"{bundle}: database {db.generation.name} with {len(db)} clip(s) "
        f"{'verified' if had else 'checksummed'}; manifest.json rewritten{cleaned}"
    )


def list_clips(bundle: str | Path) -> list[dict]:
    bundle = Path(bundle)
    manifest = read_bundle_manifest(bundle, verify=False)
    if manifest.retrieval is None:
        return []
    return RetrievalDB(bundle / manifest.retrieval.folder).items
