"""The curated caption map of the sound-effect corpus (``training/data/sfx_captions.tsv``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .sfx_sources import ABBREVIATIONS, SourceFile, lookup_keys, stem_label

DEFAULT_MAP = "sfx_captions.tsv"


@dataclass(frozen=True)
class CaptionEntry:
    """What one map line says: the clip's class and its phrasings."""

    label: str
    captions: tuple[str, ...]
    where: str  # file:line, for error messages and review


class CaptionMap:
    """Exact and prefix (``key*``) entries; the most specific key wins, then the longest prefix."""

    def __init__(self, exact: dict[str, CaptionEntry], prefixes: dict[str, CaptionEntry]) -> None:
        self.exact = exact
        self.prefixes = sorted(prefixes.items(), key=lambda kv: -len(kv[0]))

    def __len__(self) -> int:
        return len(self.exact) + len(self.prefixes)

    @classmethod
    def load(cls, path: str | Path | None = None) -> CaptionMap:
        """Read a map file (default: the curated one shipped with reaudio); every bad line is reported."""
        if path is None:
            text = resources.files("reaudio.training").joinpath("data", DEFAULT_MAP).read_text(encoding="utf-8")
            name = f"reaudio/training/data/{DEFAULT_MAP}"
        else:
            text, name = Path(path).read_text(encoding="utf-8"), str(path)
        return cls.parse(text, name)

    @classmethod
    def parse(cls, text: str, name: str = "<captions>") -> CaptionMap:
        exact: dict[str, CaptionEntry] = {}
        prefixes: dict[str, CaptionEntry] = {}
        problems = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            where = f"{name}:{number}"
            fields = line.split("\t")
            if len(fields) != 3:
                problems.append(f"{where}: expected 3 tab-separated fields (key, label, captions), got {len(fields)}")
                continue
            key, label, captions_text = (f.strip() for f in fields)
            captions = tuple(c.strip() for c in captions_text.split("|") if c.strip())
            if not key or not captions:
                problems.append(f"{where}: empty key or captions")
                continue
            bare = key.rstrip("*").split(":")[-1].split("/")[-1]
            label = bare if label == "-" else label
            if not re.fullmatch(r"[a-z0-9_]+", label):
                problems.append(f"{where}: label {label!r} must be lower-case words joined by '_'")
            for caption in captions:
                abbreviation = _abbreviation_in(caption)
                if abbreviation:
                    problems.append(f"{where}: caption {caption!r} copies the abbreviation {abbreviation!r}")
            table = prefixes if key.endswith("*") else exact
            plain = key.rstrip("*")
            if plain in table:
                problems.append(f"{where}: key {key!r} appears twice (first at {table[plain].where})")
                continue
            table[plain] = CaptionEntry(label, captions, where)
        if problems:
            raise ValueError(f"{name}: {len(problems)} problem(s):\n" + "\n".join("  " + p for p in problems))
        return cls(exact, prefixes)

    def lookup(self, source: SourceFile) -> CaptionEntry | None:
        """The entry for ``source``, or None when its label is not in the map (it is then reported)."""
        keys = lookup_keys(source)
        for key in keys:
            if key in self.exact:
                return self.exact[key]
        folder_key, package_key, label = keys
        for prefix, entry in self.prefixes:
            candidate = label if ":" not in prefix else folder_key if "/" in prefix else package_key
            if candidate.startswith(prefix):
                return entry
        return None


def _abbreviation_in(caption: str) -> str | None:
    words = set(re.findall(r"[a-z]+", caption.lower()))
    # Single letters and real words that happen to be abbreviations ("con", "ho") are not flagged.
    for abbreviation in ("fs", "sel", "amb", "hstep", "mstep", "pkup", "strt", "butn", "wpn", "sfx", "hh", "chh"):
        if abbreviation in words and abbreviation in ABBREVIATIONS:
            return abbreviation
    return None


def tuxpaint_caption(audio_path: Path, within: Path | None = None) -> CaptionEntry | None:
    """Tux Paint stamps describe themselves in ``<stamp>.txt`` (English first): "A badger." → "a badger".

    ``within``: a description that resolves outside this folder (a link out of the package) is not read.
    """
    description = audio_path.with_suffix(".txt")
    if not description.is_file():
        return None
    if within is not None and not description.resolve().is_relative_to(Path(within).resolve()):
        return None
    first = description.read_text(encoding="utf-8", errors="replace").splitlines()
    text = first[0].strip().rstrip(".!").strip() if first else ""
    if not text or "=" in text:
        return None
    thing = text[0].lower() + text[1:]
    if len(thing.split()) <= 6:
        captions = (f"the sound of {thing}", f"{thing} makes a sound")
    else:
        captions = (thing,)
    return CaptionEntry(stem_label(audio_path.name), captions, str(description))
