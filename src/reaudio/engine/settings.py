"""A clip's settings, declared once: what each is, its limits and choices, and where it appears.

Every surface that carries a clip's settings is derived from :data:`SETTINGS`:

- the ``generate`` flags, and the subsets other commands take (``eval``): :func:`add_arguments`;
- prompt-file columns, their parsing and ``file:line`` errors: :func:`parse_value`, :func:`start_problem`
  (``jobs/prompts.py``: ``PromptRow`` has a field per setting a row may set);
- the job's defaults (``GenerateJob`` has a field per setting with a flag) and the row-over-job
  merge: :func:`merged`;
- :class:`~reaudio.engine.planning.Request`: a field per setting marked ``request``, in declared
  order, checked by the planner with the same declaration (:func:`check_request_value`,
  :func:`start_problem`): a prompt row's text is parsed into a value by :func:`parse_value`, an
  API request's value is checked as given, and both meet the same limits, choices and rules;
- the Ray row format: the fields of ``Request``;
- the library entry's ``settings`` and the resume check: the settings marked ``resume``.

A new per-clip setting is one :class:`Setting` here plus the code that uses its value. Lower layers
(``audio/``, ``denoising/``) receive plain, validated values and never import this module; the
ranges they own (loudness) are read from them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .audio.postprocess import LOUDNESS_RANGE
from .denoising.sampler import MAX_STEPS, SAMPLERS
from .retrieval.database import MODES as RETRIEVAL_MODES

#: How a request can start from real audio instead of noise, besides an ``init_audio`` file.
INIT_KINDS = ("neighbour",)
#: Longest clip, window or start clip, in seconds.
DURATION_RANGE = (0.1, 600.0)
#: Longest prompt or negative prompt, in characters.
MAX_TEXT_CHARS = 1000
#: How reference clips join a request's context: as its only neighbours, or beside the database's.
REFERENCE_MODES = ("replace", "add")
#: Reference clips one request may give.
MAX_REFERENCES = 8
#: Prompts one timeline may hold.
MAX_SEGMENTS = 8
#: Which parts of the retrieved neighbours condition a clip, and the bundle contexts each choice keeps.
NEIGHBOUR_CONTEXTS = {
    "both": ("retrieved_text", "retrieved_audio"),
    "captions": ("retrieved_text",),
    "audio": ("retrieved_audio",),
}


@dataclass(frozen=True)
class Setting:
    """One per-clip setting.

    Attributes:
        name: its name everywhere: ``Request`` field, prompt-file column, library entry, ``--flag-name``.
        kind: ``int``, ``float``, ``str``, ``bool`` or ``Path`` (a file; relative to the prompt file in a row).
        help: one line for ``--help`` and the documentation.
        limits: inclusive (low, high) of a number; ``open_low``: the low end itself is not allowed.
        choices: the valid values of a text setting.
        row: a prompt row may set it (a row's value wins over the job's).
        flag: ``generate`` has a flag for it, and ``GenerateJob`` a field: the job-wide value.
        request: a field of ``Request`` (what the engine reads); otherwise the job uses it itself,
            to plan clips (``variations``, ``candidates``) or to finish files (``finish``).
        finish: the job-wide value lives in ``GenerateJob.postprocess`` (how files are finished).
        resume: recorded in the library entry's ``settings`` and compared when a job resumes; a
            finished clip made with another value is made again (``--overwrite``) or stops the job.
        job_default: the job's value when no flag gives one (None: the bundle's default).
        legacy: what entries written before the setting existed hold (the resume check reads it).
        bundle_default: the bundle's default, from its manifest, when neither row nor job sets it.
        group: the ``--help`` section of its flag.
        metavar: the flag's placeholder.
        parse: for a ``str`` setting with a syntax of its own: text → its canonical text, raising
            :class:`SettingError` (what the value must look like); rows, flags and requests use it.
        many: a list of values (files): a flag takes several, a row a JSON list or text separated by ';'.
    """

    name: str
    kind: type
    help: str
    limits: tuple[float, float] | None = None
    open_low: bool = False
    choices: tuple[str, ...] | None = None
    row: bool = True
    flag: bool = True
    request: bool = True
    finish: bool = False
    resume: bool = True
    job_default: Any = None
    legacy: Any = None
    bundle_default: Callable[[Any], Any] | None = None
    group: str = ""
    metavar: str | None = None
    parse: Callable[[str], str] | None = None
    many: bool = False

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


def time_ranges(text: str) -> list[tuple[float, float]]:
    """``"1.2:2.0,3:3.5"`` → [(1.2, 2.0), (3.0, 3.5)]: seconds, each start before its end, in order, not
    overlapping; raises :class:`SettingError` saying what a range must look like."""
    ranges = []
    for part in str(text).split(","):
        start, sep, end = part.strip().partition(":")
        try:
            if not sep:
                raise ValueError(part)
            a, b = float(start), float(end)
        except ValueError:
            raise SettingError(
                f"{part.strip()!r} is not a time range; write START:END in seconds, e.g. 1.2:2.0"
            ) from None
        if not (0.0 <= a < b <= DURATION_RANGE[1]):
            raise SettingError(f"{part.strip()!r}: need 0 <= START < END <= {DURATION_RANGE[1]:g} seconds")
        if ranges and a < ranges[-1][1]:
            raise SettingError(
                f"{part.strip()!r} starts before the range ahead of it ends; give ranges in order, apart"
            )
        ranges.append((a, b))
    return ranges


def canonical_ranges(value) -> str:
    """A time-range value (text, or a JSON list of [start, end] pairs) in its one written form."""
    if isinstance(value, (list, tuple)):
        try:
            value = ",".join(f"{float(a)!r}:{float(b)!r}" for a, b in value)
        except (TypeError, ValueError):
            raise SettingError(f"{value!r}: give [start, end] pairs in seconds, e.g. [[1.2, 2.0]]") from None
    return ",".join(f"{a:g}:{b:g}" for a, b in time_ranges(value))


def timeline_segments(value) -> list[tuple[float, str]]:
    """A timeline (text ``"0:a door creaks open;2:the door slams"``, or a JSON list of
    ``{"at": seconds, "prompt": text}``) as [(seconds, prompt)]: the first at 0, then in order, each
    prompt text without ';'; raises :class:`SettingError` saying what a timeline must look like."""
    if isinstance(value, (list, tuple)):
        parts = []
        for item in value:
            if not isinstance(item, dict) or set(item) != {"at", "prompt"}:
                raise SettingError(f'{item!r}: each timeline entry is {{"at": seconds, "prompt": text}}')
            parts.append((item["at"], item["prompt"]))
    else:
        parts = []
        for piece in str(value).split(";"):
            at, sep, text = piece.strip().partition(":")
            if not sep:
                raise SettingError(
                    f"{piece.strip()!r} is not a timeline entry; write SECONDS:PROMPT, e.g. 0:rain;2:thunder"
                )
            parts.append((at, text))
    segments = []
    for at, text in parts:
        try:
            seconds = float(at)
        except (TypeError, ValueError):
            raise SettingError(f"timeline time {at!r} must be a number of seconds") from None
        if not isinstance(text, str) or not text.strip() or ";" in text or len(text) > MAX_TEXT_CHARS:
            raise SettingError(f"timeline prompt {text!r} must be text of 1 to {MAX_TEXT_CHARS} characters without ';'")
        if segments and seconds <= segments[-1][0]:
            raise SettingError(f"timeline time {seconds:g} s comes after {segments[-1][0]:g} s; give times in order")
        segments.append((seconds, " ".join(text.split())))
    if not segments or segments[0][0] != 0:
        raise SettingError("a timeline starts at 0 (0:FIRST PROMPT;SECONDS:NEXT PROMPT…)")
    if len(segments) > MAX_SEGMENTS:
        raise SettingError(f"{len(segments)} timeline segments; at most {MAX_SEGMENTS}")
    return segments


def canonical_timeline(value) -> str:
    return ";".join(f"{at:g}:{text}" for at, text in timeline_segments(value))


_LONG = "long clips and loops"
_START = "starting from real audio (bundles with a vae_encoder stage)"
_EDIT = "editing a clip (init_audio; bundles with a vae_encoder stage)"
_RANK = "candidates ranked by CLAP"
_REF = "your own clips as neighbours (bundles with retrieval and an audio encoder)"

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "duration",
        float,
        "seconds per clip (default: the neighbours' median duration, else the bundle's)",
        limits=DURATION_RANGE,
    ),
    Setting(
        "seed",
        int,
        "seed of a row's first clip; the job's is a base seed: a row without one uses base + crc32(id), "
        "and variation v adds v (default 0)",
        limits=(0, 2**63 - 1),
        job_default=0,
        resume=False,  # the entry's own "seed"
    ),
    Setting(
        "steps",
        int,
        "denoising steps (default: the bundle's)",
        limits=(1, MAX_STEPS),
        bundle_default=lambda m: m.defaults.steps,
    ),
    Setting(
        "guidance",
        float,
        "classifier-free guidance scale (default: the bundle's)",
        limits=(0.0, 50.0),
        bundle_default=lambda m: m.defaults.guidance,
    ),
    Setting(
        "sampler", str, "sampler (default: the bundle's)", choices=SAMPLERS, bundle_default=lambda m: m.defaults.sampler
    ),
    Setting(
        "k",
        int,
        "retrieved neighbours per prompt, 0 for none (default: the bundle's)",
        limits=(0, 64),
        bundle_default=lambda m: m.retrieval.k if m.retrieval else 0,
    ),
    Setting(
        "retrieval",
        str,
        "match prompts to the database's captions, audio or both (default: the bundle's)",
        choices=RETRIEVAL_MODES,
        row=False,
    ),
    Setting(
        "neighbour_context",
        str,
        "what the neighbours bring to a clip: both their captions and their audio, or captions or audio "
        "alone (default both; alone needs a bundle trained with --single-context-dropout to sound right)",
        choices=tuple(NEIGHBOUR_CONTEXTS),
    ),
    Setting(
        "negative_prompt",
        str,
        "steer clips away from this text (a prompt row's negative_prompt column wins)",
        metavar="TEXT",
    ),
    Setting(
        "loop",
        bool,
        "seamless loops: each clip's end continues into its start (a prompt row's loop column wins); "
        "WAV files get a smpl loop, FLAC files LOOPSTART/LOOPLENGTH",
        job_default=False,
        legacy=False,
        group=_LONG,
    ),
    Setting(
        "window",
        float,
        "seconds one denoising window spans; longer clips are made of overlapping windows "
        "(default: the bundle's, its training length)",
        row=False,
        group=_LONG,
        metavar="SECONDS",
    ),
    Setting(
        "overlap",
        float,
        "seconds neighbouring windows share, at most half a window (default: a quarter window)",
        row=False,
        group=_LONG,
        metavar="SECONDS",
    ),
    Setting(
        "init_audio",
        Path,
        "audio-to-audio: start clips from this file (a prompt row's init_audio column wins)",
        resume=False,  # recorded by file name under "init"
        group=_START,
        metavar="FILE",
    ),
    Setting(
        "init",
        str,
        "neighbour: start each clip from its top retrieved clip's audio (an init column wins)",
        choices=INIT_KINDS,
        group=_START,
    ),
    Setting(
        "strength",
        float,
        "how far a clip may move from its start clip, in (0, 1] (default: the bundle's, 0.6)",
        limits=(0.0, 1.0),
        open_low=True,
        bundle_default=lambda m: m.defaults.strength,
        group=_START,
    ),
    Setting(
        "inpaint",
        str,
        "regenerate these time ranges of the start clip (init_audio) and keep the rest sample for sample: "
        "START:END in seconds, comma-separated (e.g. 1.2:2.0)",
        parse=canonical_ranges,
        group=_EDIT,
        metavar="START:END[,...]",
    ),
    Setting(
        "extend",
        float,
        "continue the start clip (init_audio) by this many seconds: after it (3.0) or before it (-2.0); "
        "it is kept sample for sample",
        limits=(-DURATION_RANGE[1], DURATION_RANGE[1]),
        group=_EDIT,
        metavar="SECONDS",
    ),
    Setting(
        "timeline",
        str,
        "prompts over time: SECONDS:PROMPT;SECONDS:PROMPT (the first at 0), e.g. '0:a door creaks open;2:the door "
        "slams'; each denoising window follows the prompt of the time it covers (a JSONL row: a list of "
        '{"at": S, "prompt": TEXT})',
        parse=canonical_timeline,
        group=_LONG,
        metavar="0:TEXT;S:TEXT",
    ),
    Setting(
        "reference",
        Path,
        "more like these: your own clips stand in for the retrieved neighbours, heard through the bundle's "
        "CLAP audio encoder (a row: a JSON list, or files separated by ';'; relative to the prompt file)",
        many=True,
        resume=False,  # recorded by file names and contents under "reference", "reference_sha256"
        group=_REF,
        metavar="FILE",
    ),
    Setting(
        "reference_caption",
        str,
        "the text that goes with the reference clips in the context (default: the prompt)",
        group=_REF,
        metavar="TEXT",
    ),
    Setting(
        "reference_mode",
        str,
        "replace: the reference clips are the only neighbours; add: they join the k database neighbours "
        "(default replace)",
        choices=REFERENCE_MODES,
        group=_REF,
    ),
    Setting(
        "variations", int, "clips per prompt (default 1)", limits=(1, 1000), request=False, resume=False, job_default=1
    ),
    Setting(
        "candidates",
        int,
        "generate N clips per output (seeds seed + j·2^32) and write the one whose CLAP audio embedding "
        "is closest to the prompt's (a candidates column wins; default 1)",
        limits=(1, 16),
        request=False,
        job_default=1,
        legacy=1,
        group=_RANK,
        metavar="N",
    ),
    Setting(
        "loudness_lufs",
        float,
        "integrated loudness target, ITU-R BS.1770 (e.g. -23); a prompt row's loudness_lufs wins",
        limits=LOUDNESS_RANGE,
        request=False,
        finish=True,
    ),
)


def by_name() -> dict[str, Setting]:
    return {s.name: s for s in SETTINGS}


def row_fields() -> tuple[str, ...]:
    """Columns a prompt file may have: the prompt, its id, and the settings a row may set."""
    return ("prompt", "id", *(s.name for s in SETTINGS if s.row))


def resume_keys() -> tuple[str, ...]:
    """The settings a finished clip records and a resumed job compares."""
    return tuple(s.name for s in SETTINGS if s.resume)


def add(setting: Setting) -> None:
    """Declare one more setting (before the modules that derive from the schema are imported:
    ``Request``, ``PromptRow`` and ``GenerateJob`` are made from it at import)."""
    global SETTINGS
    if setting.name in by_name():
        raise ValueError(f"setting {setting.name!r} is declared already")
    SETTINGS = (*SETTINGS, setting)


# -- command lines ----------------------------------------------------------------------------


def add_arguments(parser, names: Iterable[str] | None = None) -> None:
    """A ``--flag`` per setting in ``names`` (default: every one with ``flag``), grouped as in ``--help``;
    defaults are the settings' ``job_default``."""
    chosen = [by_name()[n] for n in names] if names is not None else [s for s in SETTINGS if s.flag]
    groups: dict[str, Any] = {}
    for setting in chosen:
        where = parser
        if setting.group:
            if setting.group not in groups:
                groups[setting.group] = parser.add_argument_group(setting.group)
            where = groups[setting.group]
        if setting.kind is bool:
            where.add_argument(setting.option, action="store_true", help=setting.help)
            continue
        where.add_argument(
            setting.option,
            type=_flag_type(setting),
            nargs="+" if setting.many else None,
            choices=setting.choices,
            default=setting.job_default,
            metavar=setting.metavar,
            help=setting.help,
        )


def _flag_type(setting: Setting):
    if setting.parse is None:
        return setting.kind

    def parse(text: str) -> str:
        try:
            return setting.parse(text)
        except SettingError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = setting.name  # argparse names the type in its errors
    return parse


def from_arguments(args: argparse.Namespace, names: Iterable[str] | None = None) -> dict[str, Any]:
    """The values of the flags :func:`add_arguments` added, by setting name."""
    chosen = [by_name()[n] for n in names] if names is not None else [s for s in SETTINGS if s.flag]
    return {s.name: getattr(args, s.name) for s in chosen}


# -- validation ---------------------------------------------------------------------------------


class SettingError(ValueError):
    """A value a setting cannot take; the message says what is valid."""


def _exact_int(value) -> int:
    """An integer from an int, an integral float or a decimal string, without passing through
    float for strings and ints (2**53 + 1 stays itself)."""
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(value)
        return int(value)
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        as_float = float(text)  # "1e3", "4.0"
        if not as_float.is_integer() or abs(as_float) >= 2**53:
            raise ValueError(value) from None
        return int(as_float)


_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def in_range(setting: Setting, number: float) -> bool:
    lo, hi = setting.limits or (float("-inf"), float("inf"))
    low_ok = lo < number if setting.open_low else lo <= number
    return low_ok and number <= hi and number == number


def range_text(setting: Setting) -> str:
    lo, hi = setting.limits or (float("-inf"), float("inf"))
    return f"must be in ({lo:g}, {hi:g}]" if setting.open_low else f"is out of range; valid: {lo} to {hi}"


def parse_value(setting: Setting, value) -> Any:
    """A prompt-file value (JSON, or CSV text) as the setting's type, within its limits and choices
    (None: a blank text, which sets nothing); raises :class:`SettingError` saying what is valid."""
    name = setting.name
    if setting.kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise SettingError(f"{name}={value!r} must be true or false (or yes/no, 1/0)")
    if setting.kind in (int, float):
        if isinstance(value, bool):
            raise SettingError(f"{name}={value!r} must be a number")
        try:
            number = _exact_int(value) if setting.kind is int else float(value)
        except (TypeError, ValueError, OverflowError):
            kind = "an integer" if setting.kind is int else "a number"
            raise SettingError(f"{name}={value!r} must be {kind}") from None
        if not in_range(setting, number):
            raise SettingError(f"{name}={value!r} {range_text(setting)}")
        return number
    if setting.choices is not None:
        if value not in setting.choices:
            raise SettingError(f"{name}={value!r}; valid: {', '.join(setting.choices)}")
        return value
    if setting.parse is not None:
        if isinstance(value, str) and not value.strip():
            return None
        try:
            return setting.parse(value)
        except SettingError as exc:
            raise SettingError(f"{name}: {exc}") from None
    if setting.many:
        return _parse_many(setting, value)
    if not isinstance(value, str):
        what = "a path to an audio file" if setting.kind is Path else "text"
        raise SettingError(f"{name}={value!r} must be {what}")
    if setting.kind is Path:
        return value
    if len(value) > MAX_TEXT_CHARS:
        raise SettingError(f"{name} must be text of at most {MAX_TEXT_CHARS} characters")
    return " ".join(value.split()) or None


def _parse_many(setting: Setting, value) -> list[str] | None:
    """A list setting's row value: a JSON list of texts, or one text separated by ';'."""
    items = value if isinstance(value, list) else str(value).split(";") if isinstance(value, str) else None
    if items is None or not all(isinstance(item, str) for item in items):
        raise SettingError(f"{setting.name}={value!r} must be a list of files (JSON) or files separated by ';'")
    items = [item.strip() for item in items if item.strip()]
    if len(items) > MAX_REFERENCES:
        raise SettingError(f"{setting.name}: {len(items)} files; at most {MAX_REFERENCES}")
    return items or None


def reference_problem(reference, caption, mode, row: bool = False) -> str | None:
    """What is wrong with reference settings together, or None: a caption or mode needs clips."""
    if reference is None or (isinstance(reference, (list, tuple)) and not len(reference)):
        for name, value in (("reference_caption", caption), ("reference_mode", mode)):
            if value is not None:
                return f"{name} needs reference clips" + (" on the same row" if row else " (reference)")
    return None


def check_value(setting: Setting, value) -> None:
    """A number given to the API (``Request``) within the setting's range; raises :class:`SettingError`."""
    if not in_range(setting, value):
        raise SettingError(f"{setting.name}={value!r} {range_text(setting)}")


def check_request_value(setting: Setting, value) -> None:
    """A value given to the API (a ``Request`` field; not None) of the setting's type, within its limits
    and choices; raises :class:`SettingError`. ``Path`` settings (a file or samples) and ``retrieval``
    (whose choices are the bundle's database's) are the planner's to check."""
    import numbers

    name = setting.name
    if setting.kind is bool:
        if not isinstance(value, (bool, np.bool_)):
            raise SettingError(f"{name}={value!r} must be true or false")
        return
    if setting.kind in (int, float):
        integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if setting.kind is int and not integral:
            raise SettingError(f"{name}={value!r} must be an integer")
        if setting.kind is float and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise SettingError(f"{name}={value!r} must be a number")
        check_value(setting, value)
        return
    if setting.choices is not None and name != "retrieval" and value not in setting.choices:
        raise SettingError(f"{name}={value!r}; valid: {', '.join(setting.choices)}")
    if setting.parse is not None:
        try:
            setting.parse(value)
        except SettingError as exc:
            raise SettingError(f"{name}: {exc}") from None
        return
    if setting.kind is str and not isinstance(value, str):
        raise SettingError(f"{name}={value!r} must be text")


def start_problem(init_audio, init, strength, *, inpaint=None, extend=None, row: bool = False) -> str | None:
    """What is wrong with a start clip's settings together (one of them alone is checked by its
    setting), or None. ``row``: phrased for a prompt row."""
    if init is not None and init_audio is not None:
        return "give init_audio or init, not both"
    if inpaint is not None and extend:
        return "give inpaint or extend, not both (extend a clip, then inpaint the result)"
    for name, value in (("inpaint", inpaint), ("extend", extend)):
        if value is not None and value != 0 and init_audio is None:
            return f"{name} edits a start clip: it needs init_audio" + (" on the same row" if row else "")
    if strength is not None and init is None and init_audio is None:
        if row:
            return "strength needs init_audio or init on the same row"
        return f"strength={strength} needs init_audio or init=neighbour"
    return None


# -- merging ------------------------------------------------------------------------------------


def merged(row, job, name: str) -> Any:
    """A clip's value of setting ``name``: its row's when the row sets it, else the job's."""
    setting = by_name()[name]
    value = getattr(row, name, None) if setting.row else None
    if value is not None:
        return value
    return getattr(job.postprocess if setting.finish else job, name)


def start_of(row, job) -> tuple[str | None, str | None]:
    """A clip's start clip, (init_audio path, init kind): a row's own start wins as a whole over the job's."""
    if row.init_audio is not None or row.init is not None:
        return row.init_audio, row.init
    return (str(job.init_audio) if job.init_audio is not None else None), job.init


# -- derived fields -----------------------------------------------------------------------------


def fields_for(which: str) -> list[tuple[str, Any, Any]]:
    """(name, type, default) of the settings a derived dataclass carries, in declared order:
    ``request`` (``Request``), ``row`` (``PromptRow``: None means "the job's") or ``job``
    (``GenerateJob``: the flags' defaults)."""
    out = []
    for s in SETTINGS:
        if which == "request" and s.request:
            default = s.job_default if s.name in ("seed", "loop") else None
        elif which == "row" and s.row:
            default = None
        elif which == "job" and s.flag and not s.finish:
            default = s.job_default
        else:
            continue
        out.append((s.name, Any, default))
    return out


def describe(which: str) -> str:
    """Docstring lines (``name: help``) of the settings :func:`fields_for` gives."""
    return "\n".join(f"        {name}: {by_name()[name].help}" for name, _, _ in fields_for(which))
