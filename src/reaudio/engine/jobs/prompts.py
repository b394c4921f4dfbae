"""Prompt files (.txt, .csv, .jsonl): parsed and validated whole before any work starts."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ..audio.init_audio import audio_file_problem
from ..planning import INIT_KINDS, LIMITS
from .records import numbered_lines, read_records

FIELDS = (
    "prompt",
    "id",
    "seed",
    "duration",
    "steps",
    "guidance",
    "k",
    "variations",
    "sampler",
    "loudness_lufs",
    "loop",
    "negative_prompt",
    "init_audio",
    "init",
    "strength",
    "candidates",
)
MAX_PROMPT_CHARS = 1000
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class PromptRow:
    """One validated row; None means "use the job's default"."""

    prompt: str
    id: str
    line: int
    seed: int | None = None
    duration: float | None = None
    steps: int | None = None
    guidance: float | None = None
    k: int | None = None
    variations: int | None = None
    sampler: str | None = None
    loudness_lufs: float | None = None
    loop: bool | None = None
    negative_prompt: str | None = None
    init_audio: str | None = None  # resolved against the prompt file's folder
    init: str | None = None
    strength: float | None = None
    candidates: int | None = None
    id_from_text: bool = False  # no id given: derived from the prompt


@dataclass
class PromptFileError(ValueError):
    """Every problem found in a prompt file, each as ``file:line: message``."""

    problems: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        head = f"{len(self.problems)} problem(s) in the prompt file:"
        return "\n".join([head, *("  " + p for p in self.problems)])


_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


def is_reserved_name(name: str) -> bool:
    """Windows refuses these as file names, with any extension (``aux.txt``, ``NUL.wav``)."""
    return name.split(".", 1)[0].lower() in _RESERVED


def slugify(text: str, max_len: int = 48) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "prompt"


def read_prompt_file(path: str | Path, samplers: tuple[str, ...] = ("ddim", "dpmpp-2m")) -> list[PromptRow]:
    """Parse ``path``; raise ``PromptFileError`` listing every bad row, or return the rows."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError([f"{path}: no such prompt file"])
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".csv", ".jsonl"):
        raise PromptFileError([f"{path}: unsupported extension {suffix!r}; use .txt, .csv or .jsonl"])
    problems: list[str] = []
    lines = numbered_lines(path, problems)
    if suffix == ".txt":
        records = _txt_records(path, lines, problems)
    else:
        records = read_records(path, ("prompt",), problems, allowed=FIELDS, lines=lines)
    rows = [r for r in (_validate(path, line, rec, problems, samplers) for line, rec in records) if r is not None]
    rows = _number_repeats(rows)
    seen: dict[str, int] = {}
    for row in rows:
        if row.id in seen:
            problems.append(f"{path}:{row.line}: duplicate id {row.id!r} (first on line {seen[row.id]})")
        seen.setdefault(row.id, row.line)
    if not rows and not problems:
        problems.append(f"{path}: no prompts found")
    if problems:
        raise PromptFileError(problems)
    return rows


def text_id(prompt: str) -> str:
    """A row id from the prompt alone (slug + crc32), so inserting or moving lines keeps the ids,
    and the finished clips, of every other prompt."""
    return f"{slugify(prompt)}-{zlib.crc32(prompt.encode('utf-8')):08x}"


def _number_repeats(rows: list[PromptRow]) -> list[PromptRow]:
    """The second and later rows of one prompt without an id get ``-2``, ``-3``… on their text id."""
    from dataclasses import replace

    counts: dict[str, int] = {}
    out = []
    for row in rows:
        if row.id_from_text:
            counts[row.id] = counts.get(row.id, 0) + 1
            if counts[row.id] > 1:
                row = replace(row, id=f"{row.id}-{counts[row.id]}")
        out.append(row)
    return out


def _txt_records(path: Path, lines, problems) -> list[tuple[int, dict]]:
    out = []
    for number, text in lines:
        text = text.strip()
        if text and not text.startswith("#"):
            out.append((number, {"prompt": text}))
    return out


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


def _flag(path, line, name, value, problems) -> bool | None:
    """A yes/no column: JSON true/false, or (CSV) true/false, yes/no, 1/0 in any case."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    problems.append(f"{path}:{line}: {name}={value!r} must be true or false (or yes/no, 1/0)")
    return None


def _number(path, line, name, value, kind, problems):
    where = f"{path}:{line}"
    if isinstance(value, bool):
        problems.append(f"{where}: {name}={value!r} must be a number")
        return None
    try:
        if kind is int:
            number = _exact_int(value)
        else:
            number = float(value)
    except (TypeError, ValueError, OverflowError):
        problems.append(f"{where}: {name}={value!r} must be {'an integer' if kind is int else 'a number'}")
        return None
    lo, hi = LIMITS[name]
    if not (lo <= number <= hi) or (kind is float and number != number):
        problems.append(f"{where}: {name}={value!r} is out of range; valid: {lo} to {hi}")
        return None
    return number


def _start_clip(path, line, record, problems) -> dict:
    """init_audio (a readable audio file, relative to the prompt file), init and strength."""
    out: dict = {}
    where = f"{path}:{line}"
    audio, init, strength = record.get("init_audio"), record.get("init"), record.get("strength")
    if init is not None:
        if init not in INIT_KINDS:
            problems.append(f"{where}: init={init!r}; valid: {', '.join(INIT_KINDS)} (or an init_audio file)")
        else:
            out["init"] = init
    if audio is not None:
        if init is not None:
            problems.append(f"{where}: give init_audio or init, not both")
        elif not isinstance(audio, str):
            problems.append(f"{where}: init_audio={audio!r} must be a path to an audio file")
        else:
            file = path.parent / audio
            problem = audio_file_problem(file, LIMITS["duration"])
            if problem:
                problems.append(f"{where}: init_audio {audio!r} ({file}): {problem}")
            else:
                out["init_audio"] = str(file)
    if strength is not None:
        try:
            value = float(strength) if not isinstance(strength, bool) else None
        except (TypeError, ValueError):
            value = None
        if value is None or not 0.0 < value <= 1.0:
            problems.append(f"{where}: strength={strength!r} must be a number in (0, 1] (1: ignore the start clip)")
        elif audio is None and init is None:
            problems.append(f"{where}: strength needs init_audio or init on the same row")
        else:
            out["strength"] = value
    return out


def _validate(path, line, record, problems, samplers) -> PromptRow | None:
    before = len(problems)
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append(f"{path}:{line}: missing or empty prompt")
        return None
    prompt = " ".join(prompt.split())
    if len(prompt) > MAX_PROMPT_CHARS:
        problems.append(f"{path}:{line}: prompt is {len(prompt)} characters; at most {MAX_PROMPT_CHARS}")
    values = {}
    for name, kind in (
        ("seed", int),
        ("duration", float),
        ("steps", int),
        ("guidance", float),
        ("k", int),
        ("variations", int),
        ("loudness_lufs", float),
    ):
        if record.get(name) is not None:
            values[name] = _number(path, line, name, record[name], kind, problems)
    if record.get("loop") is not None:
        values["loop"] = _flag(path, line, "loop", record["loop"], problems)
    if record.get("candidates") is not None:
        values["candidates"] = _number(path, line, "candidates", record["candidates"], int, problems)
    values.update(_start_clip(path, line, record, problems))
    negative = record.get("negative_prompt")
    if negative is not None:
        if not isinstance(negative, str) or len(negative) > MAX_PROMPT_CHARS:
            problems.append(f"{path}:{line}: negative_prompt must be text of at most {MAX_PROMPT_CHARS} characters")
        elif negative.strip():
            values["negative_prompt"] = " ".join(negative.split())
    sampler = record.get("sampler")
    if sampler is not None and sampler not in samplers:
        problems.append(f"{path}:{line}: sampler={sampler!r}; valid: {', '.join(samplers)}")
    raw_id = record.get("id")
    if raw_id is None or str(raw_id).strip() == "":
        row_id = text_id(prompt)  # numbered on repeats by read_prompt_file
    else:
        row_id = str(raw_id).strip()
        if not ID_PATTERN.match(row_id):
            problems.append(
                f"{path}:{line}: id {row_id!r} is not usable in file names; use letters, digits, '.', '_', '-' "
                f"(at most 128, not starting with '.', '_' or '-')"
            )
        elif is_reserved_name(row_id):
            problems.append(
                f"{path}:{line}: id {row_id!r} is a reserved device name on Windows "
                f"(CON, PRN, AUX, NUL, COM1-9, LPT1-9); libraries are copied there: choose another"
            )
    if len(problems) > before:
        return None
    return PromptRow(
        prompt=prompt,
        id=row_id,
        line=line,
        sampler=sampler,
        id_from_text=raw_id is None or str(raw_id).strip() == "",
        **values,
    )
