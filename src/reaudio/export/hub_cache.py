"""Models as users already have them: a Hugging Face hub id found in the local cache, and its licence.

Nothing here downloads: a hub id resolves only to a snapshot already in the cache
(``huggingface_hub`` with ``local_files_only``), and a missing one fails naming the
cache folder and the command that fetches it on a machine with network access.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from reaudio.engine.bundle.manifest import Licence

log = logging.getLogger(__name__)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubCacheError(ValueError):
    """A hub id that is not in the local cache, or a source that is neither a folder nor a hub id."""


def cache_folder(cache_dir: str | Path | None = None) -> Path:
    from huggingface_hub import constants

    return Path(cache_dir) if cache_dir else Path(constants.HF_HUB_CACHE)


def resolve_model(source: str | Path, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """A local folder as given, or the cached snapshot folder of the hub id ``source``."""
    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise HubCacheError(f"{source}: a file; give the pipeline folder (holding model_index.json) or a hub id")
        return path
    if not HUB_ID.match(str(source)):
        raise HubCacheError(f"{source}: no such folder, and not a hub id of the form org/name")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = cache_folder(cache_dir)
    try:
        return Path(snapshot_download(str(source), revision=revision, cache_dir=str(cache), local_files_only=True))
    except LocalEntryNotFoundError as e:
        rev = f" --revision {revision}" if revision else ""
        raise HubCacheError(
            f"{source}{'@' + revision if revision else ''} is not in the Hugging Face cache ({cache}); reaudio never "
            f"downloads. Fetch it where there is network with `hf download {source}{rev}` (set HF_HUB_CACHE or "
            f"HF_HOME to choose the cache folder), then run this again or pass the snapshot folder"
        ) from e


def card_licence(folder: Path) -> str | None:
    """The ``license:`` of the model card (README.md front matter) in ``folder``, if it states one."""
    card = folder / "README.md"
    if not card.is_file():
        return None
    from huggingface_hub import ModelCard

    data = ModelCard.load(card).data.to_dict()
    value = data.get("license")
    if value == "other":  # the card names it in license_name / license_link
        value = data.get("license_name") or data.get("license_link") or value
    return str(value) if value else None


def model_licence(folder: Path, model: str, given: str | None = None) -> Licence:
    """The licence to record: ``given`` (``--licence``) wins; else the model card's; else "unknown"."""
    found = card_licence(folder)
    if given:
        if found and found.lower() != given.lower():
            log.warning("--licence %s differs from the model card's %s; recording --licence", given, found)
        return Licence(given, "--licence", model)
    if found:
        return Licence(found, "model card", model)
    return Licence("unknown", "no model card licence and no --licence", model)
