"""Which files of the Debian sound-effect packages are sound effects, and what their file names say.

The rules are data about the packages (directory conventions of each game),
kept apart from the builder so they can be reviewed and tested alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

#: The packages the corpus is built from (others are reserved for held-out evaluation).
PACKAGES = (
    "0ad-data",
    "megaglest-data",
    "wesnoth-1.16-data",
    "nexuiz-data",
    "hedgewars-data",
    "supertuxkart-data",
    "freedroidrpg-data",
    "warmux-data",
    "supertux-data",
    "freeorion-data",
    "openarena-data",
    "tuxpaint-stamps-default",
    "sonic-pi-samples",
    "hydrogen-drumkits",
    "lmms-common",
)

#: Packages held out of training entirely: the zero-shot evaluation split ("heldout").
HELDOUT_PACKAGES = ("supertuxkart-data",)

#: Packages kept for an independent evaluation outside this project: they never enter a corpus, a
#: database, a tuning run or a test, so the builder refuses them by name before fetching anything.
RESERVED_PACKAGES = ("minetest-data", "widelands-data", "lincity-ng-data")


def refuse_reserved(packages) -> None:
    """Raise ValueError when any of ``packages`` is reserved for the independent evaluation."""
    reserved = sorted(set(packages) & set(RESERVED_PACKAGES))
    if reserved:
        raise ValueError(
            f"package(s) {', '.join(reserved)} are reserved for an independent evaluation and never enter a "
            f"corpus (reserved: {', '.join(RESERVED_PACKAGES)})"
        )


AUDIO_SUFFIXES = (".ogg", ".wav", ".flac", ".mp3")
ARCHIVE_SUFFIXES = (".zip", ".pk3")

#: File-name abbreviations of the games, expanded before a label is looked up.
ABBREVIATIONS = {
    "fs": "footstep",
    "sel": "select",
    "con": "construction",
    "amb": "ambient",
    "hstep": "footstep",
    "mstep": "hoofstep",
    "ele": "elephant",
    "orni": "ornithopter",
    "dr": "dragon_rider",
    "gen": "generic",
    "pkup": "pickup",
    "strt": "start",
    "butn": "button",
    "wpn": "weapon",
    "exp": "explosion",
    "expl": "explosion",
    "snd": "sound",
    "sfx": "effect",
    "fx": "effect",
    "bd": "bass_drum",
    "sd": "snare",
    "hh": "hihat",
    "chh": "closed_hihat",
    "ohh": "open_hihat",
    "ho": "open_hihat",
    "hc": "closed_hihat",
}

# (package, path regex, reason): the first match drops the file. Paths are package-relative, lower case.
_DROP_RULES: tuple[tuple[str, str, str], ...] = (
    ("*", r"(^|/)(music|titles)/", "music"),
    ("0ad-data", r"audio/voice/(?!global/civ_dog)", "voice"),
    ("0ad-data", r"audio/interface/(select|complete)/building/", "interface cue"),
    ("megaglest-data", r"_(ack|select|sel)\d*[a-z]?\.wav$", "voice"),
    ("megaglest-data", r"/(ack|select)\d*\.wav$", "voice"),
    ("megaglest-data", r"good_morning\.wav$", "voice"),
    ("hedgewars-data", r"sounds/voices/", "voice"),
    ("nexuiz-data", r"sound/(announcer|tutorial)/|/coms/", "voice"),
    ("openarena-data", r"sound/voices/|/announcer/", "voice"),
    ("freedroidrpg-data", r"voice_samples/|tux_ingame_comments/|/titles/", "voice"),
    ("freedroidrpg-data", r"(first_contact|start_attack)_sound", "voice"),
    ("warmux-data", r"sound/default/voices/", "voice"),
    ("tuxpaint-stamps-default", r"_desc(_[a-z]{2,3}){0,2}(\.ogg)+$", "voice"),
    ("tuxpaint-stamps-default", r"stamps/symbols/(alphabets|math|money|chess|music)/", "voice"),
    ("lmms-common", r"samples/(basses|bassloops|beats|instruments|latin|stringsnpads|shapes|waveforms)/", "music"),
)
_DROP = tuple((pkg, re.compile(rx), why) for pkg, rx, why in _DROP_RULES)


@dataclass(frozen=True)
class SourceFile:
    """One audio file of a package; ``member`` is set when it lives inside an archive."""

    package: str
    path: str  # package-relative path of the file, or of the archive holding it
    member: str = ""

    @property
    def inner_path(self) -> str:
        """The path that names the sound: the archive member, else the file."""
        return self.member or self.path

    @property
    def key(self) -> str:
        """A stable identifier of the file, unique across the corpus."""
        return f"{self.package}/{self.path}" + (f"!{self.member}" if self.member else "")


def drop_reason(source: SourceFile) -> str | None:
    """Why ``source`` is not a sound effect (music, voice, interface cue), or None to keep it."""
    path = source.inner_path.lower()
    for pkg, rx, why in _DROP:
        if pkg in ("*", source.package) and rx.search(path):
            return why
    return None


def stem_label(name: str) -> str:
    """The label a file name carries: lower case, numbering removed, abbreviations expanded.

    ``fs_grass3.ogg`` → ``footstep_grass``; ``Footstep_Gravel_Running.ogg`` → ``footstep_gravel_running``.
    """
    stem = PurePosixPath(name).name
    while PurePosixPath(stem).suffix.lower() in AUDIO_SUFFIXES:
        stem = stem[: -len(PurePosixPath(stem).suffix)]
    stem = re.sub(r"([a-z])([A-Z])", r"\1_\2", stem).lower()
    stem = re.sub(r"[^a-z0-9]+", "_", stem)
    tokens = [t for t in stem.split("_") if t]
    # Numbering ("_01", "3", "1g", "a" after a number) carries no meaning; strip it from the end.
    while tokens and (re.fullmatch(r"\d+[a-z]?", tokens[-1]) or (len(tokens) > 1 and len(tokens[-1]) == 1)):
        tokens.pop()
    if tokens:
        tokens[-1] = re.sub(r"\d+[a-z]?$", "", tokens[-1]) or tokens[-1]
    tokens = [t for t in tokens if not t.isdigit()]
    expanded = [ABBREVIATIONS.get(t, t) for t in tokens]
    return "_".join(expanded) or "unnamed"


def lookup_keys(source: SourceFile) -> tuple[str, ...]:
    """Caption-map keys for ``source``, most specific first: package:folder/label, package:label, label."""
    label = stem_label(source.inner_path)
    folder = PurePosixPath(source.inner_path).parent.name.lower().replace(" ", "_")
    return (f"{source.package}:{folder}/{label}", f"{source.package}:{label}", label)
