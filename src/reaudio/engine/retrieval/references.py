"""A request's own clips as its neighbours ("more like these"): their features made as ``db add``
makes a database item's, placed in the batch's gathered contexts after the database neighbours."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .database import DatabaseInfo, Neighbours

#: The gathered arrays, with the shape of one neighbour slot of each (read from the database).
_SLOTS = ("caption_tokens", "caption_mask", "audio_tokens", "audio_mask")


@dataclass(frozen=True)
class References:
    """One request's reference clips (mono samples at the bundle's rate), their caption and names."""

    clips: list[np.ndarray]
    caption: str
    names: list[str]


def with_references(
    gathered: Neighbours,
    neighbours: list[list[dict]],
    info: DatabaseInfo,
    references: list[References],
    audio_tokens: Callable[[list[np.ndarray]], np.ndarray],
    caption_tokens: Callable[[str, int], tuple[np.ndarray, np.ndarray]],
) -> Neighbours:
    """``gathered`` with row i's ``references[i]`` after its database neighbours (a request that gives
    clips in "replace" mode was planned with k = 0, so they are its only ones). ``audio_tokens(waves)``:
    the CLAP audio encoder's pooled tokens (N, M, D); ``caption_tokens(text, L)``: the text encoder's
    token features (1, L, H) and mask (1, L). ``neighbours[i]`` gains a ``reference:NAME`` record per clip."""
    b = len(references)
    shapes = {
        "caption_tokens": (info.caption_tokens, info.caption_dim),
        "caption_mask": (info.caption_tokens,),
        "audio_tokens": (info.audio_tokens, info.audio_dim),
        "audio_mask": (info.audio_tokens,),
    }
    kept = [np.flatnonzero(row >= 0) for row in gathered.ids]
    width = max(max(1, len(k) + len(r.clips)) for k, r in zip(kept, references))
    old = {n: getattr(gathered, n).reshape(b, -1, *shapes[n]) for n in _SLOTS}
    new = {n: np.zeros((b, width, *shapes[n]), old[n].dtype) for n in _SLOTS}
    ids = np.full((b, width), -1, dtype=gathered.ids.dtype)
    for i, ref in enumerate(references):
        for name in _SLOTS:
            new[name][i, : len(kept[i])] = old[name][i, kept[i]]
        ids[i, : len(kept[i])] = gathered.ids[i, kept[i]]
        if not ref.clips:
            continue
        at = slice(len(kept[i]), len(kept[i]) + len(ref.clips))
        new["audio_tokens"][i, at] = audio_tokens(ref.clips)
        new["audio_mask"][i, at] = True
        tokens, mask = caption_tokens(ref.caption, info.caption_tokens)
        # Stored as the database stores captions: padding positions zeroed.
        new["caption_tokens"][i, at] = tokens[0] * mask[0][:, None]
        new["caption_mask"][i, at] = mask[0]
        neighbours[i].extend({"id": f"reference:{name}", "caption": ref.caption} for name in ref.names)
    return Neighbours(ids=ids, **{n: a.reshape(b, width * a.shape[2], *a.shape[3:]) for n, a in new.items()})
