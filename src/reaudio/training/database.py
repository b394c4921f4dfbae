"""Build a retrieval database from (audio, caption) items with a torch CLAP."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reaudio.engine.retrieval.database import DatabaseInfo, Items, RetrievalDB
from reaudio.models.clap import CLAP
from reaudio.models.mel import LogMel
from reaudio.models.retrieval_features import (
    RetrievalConfig,
    RetrievalFeatureEncoder,
    database_key_settings,
)

log = logging.getLogger(__name__)


@dataclass
class AudioItem:
    id: str
    audio: np.ndarray  # mono float32 at the front end's sample rate
    caption: str
    label: str = ""
    source: str = ""
    path: str = ""  # where the audio is, recorded so neighbour-seeded generation can load it


@torch.no_grad()
def encode_items(clap: CLAP, mel: LogMel, retrieval: RetrievalConfig, items: list[AudioItem], batch: int = 16) -> Items:
    """CLAP keys and neighbour features for ``items`` (audio of any lengths)."""
    clap.eval()
    enc = RetrievalFeatureEncoder(clap, retrieval)
    keys, caption_keys, audio_tokens, cap_tokens, cap_masks = [], [], [], [], []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        for item in chunk:  # per item: clips differ in length
            m = clap.audio_input(item.audio, mel)
            audio_tokens.append(enc.audio_features(m)[0].numpy())
            if retrieval.key != "text":
                keys.append(clap.embed_audio(m)[0].numpy())
        tokens, mask = enc.caption_features([i.caption for i in chunk])
        cap_tokens.append(tokens.numpy())
        cap_masks.append(mask.numpy())
        ids, am = clap.tokenizer([i.caption for i in chunk])
        caption_keys.extend(clap.embed_text(torch.from_numpy(ids), torch.from_numpy(am)).numpy())
    records = [
        {
            "id": i.id,
            "caption": i.caption,
            "label": i.label,
            "source": i.source,
            "duration": round(len(i.audio) / mel.cfg.sample_rate, 3),
            **({"audio": i.path} if i.path else {}),
        }
        for i in items
    ]
    if retrieval.key == "text":
        return Items(
            records,
            np.stack(caption_keys),
            np.stack(audio_tokens),
            np.concatenate(cap_tokens),
            np.concatenate(cap_masks),
        )
    return Items(
        records,
        np.stack(keys),
        np.stack(audio_tokens),
        np.concatenate(cap_tokens),
        np.concatenate(cap_masks),
        np.stack(caption_keys),
    )


def build_database(
    folder: str | Path,
    clap: CLAP,
    mel: LogMel,
    retrieval: RetrievalConfig,
    items: list[AudioItem],
    provenance: dict,
    index: str = "hnsw",
) -> RetrievalDB:
    """``index``: "hnsw" or "ivf", used above the exact-search threshold (see DatabaseInfo)."""
    info = DatabaseInfo(
        index=index,
        **database_key_settings(retrieval),
        embed_dim=clap.cfg.embed_dim,
        audio_tokens=retrieval.audio_tokens,
        audio_dim=clap.cfg.audio.width,
        caption_tokens=retrieval.caption_tokens,
        caption_dim=clap.cfg.text.hidden_size,
        provenance=provenance,
    )
    db = RetrievalDB.create(folder, info)
    db = db.add(encode_items(clap, mel, retrieval, items))
    log.info("database %s: %d items", folder, len(db))
    return db


def build_database_from_manifest(
    manifest: str | Path,
    clap_checkpoint: str | Path,
    family,
    out: str | Path,
    splits: tuple[str, ...] = ("train",),
    index: str = "hnsw",
) -> RetrievalDB:
    """A database over a manifest's clips (default: the train split), with a trained CLAP."""
    from reaudio.engine.audio.audio_io import load_audio
    from reaudio.engine.bundle.manifest import sha256_file
    from reaudio.models.checkpoint import load_checkpoint

    from .data import read_corpus

    clap = load_checkpoint(clap_checkpoint).eval()
    clips = [c for c in read_corpus(manifest) if c.split in splits]
    items = [
        AudioItem(
            c.id,
            load_audio(c.audio, family.mel.sample_rate),
            c.caption,
            c.label,
            c.source,
            str(Path(c.audio).resolve()),
        )
        for c in clips
    ]
    provenance = {
        "clap": str(clap_checkpoint),
        "manifest": str(manifest),
        "manifest_sha256": sha256_file(Path(manifest)),
        "splits": list(splits),
        "k": family.retrieval.k,
        "exclusions": "self and same source at training",
    }
    return build_database(out, clap, LogMel(family.mel), family.retrieval, items, provenance, index=index)
