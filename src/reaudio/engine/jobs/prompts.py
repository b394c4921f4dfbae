"""Prompt files (.txt, .csv, .jsonl): parsed and validated whole before any work starts."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path

from .. import settings
from ..audio.init_audio import audio_file_problem
from .records import numbered_lines, read_records

#: The columns a prompt file may have (from the clip settings' schema).
FIELDS = settings.row_fields()
MAX_PROMPT_CHARS = settings.MAX_TEXT_CHARS
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

PromptRow = make_dataclass(
    "PromptRow",
    [("prompt", str), ("id", str), ("line", int), *settings.fields_for("row"), ("id_from_text", bool, False)],
    frozen=True,
)
PromptRow.__module__ = __name__
PromptRow.__doc__ = f"""One validated row of a prompt file; a setting left None takes the job's value.

    Attributes:
        prompt: the text (whitespace squeezed); id: the row's id (from the prompt when not given);
        line: where it is in the file; id_from_text: no id was given.
{settings.describe("row")}
    init_audio is resolved against the prompt file's folder.
    """


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


def read_prompt_file(path: str | Path) -> list[PromptRow]:
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
    rows = [r for r in (_validate(path, line, rec, problems) for line, rec in records) if r is not None]
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


def _validate(path, line, record, problems) -> PromptRow | None:
    row, found = check_record(record, line, Path(path).parent)
    problems += [f"{path}:{line}: {message}" for _, message in found]
    return row


def check_record(record: dict, line: int, folder: Path | None) -> tuple[PromptRow | None, list[tuple[str, str]]]:
    """One prompt row's record checked: the row, or None and every problem as (field, what is wrong).
    ``init_audio`` is a file relative to ``folder`` (None: the record may not name one)."""
    problems: list[tuple[str, str]] = []
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return None, [("prompt", "missing or empty prompt")]
    prompt = " ".join(prompt.split())
    if len(prompt) > MAX_PROMPT_CHARS:
        problems.append(("prompt", f"prompt is {len(prompt)} characters; at most {MAX_PROMPT_CHARS}"))
    values = {}
    for setting in settings.SETTINGS:
        raw = record.get(setting.name)
        if not setting.row or raw is None:
            continue
        try:
            value = settings.parse_value(setting, raw)
        except settings.SettingError as exc:
            problems.append((setting.name, str(exc)))
            continue
        if value is not None:
            values[setting.name] = value
    start = settings.start_problem(
        record.get("init_audio"),
        record.get("init"),
        record.get("strength"),
        inpaint=record.get("inpaint"),
        extend=record.get("extend"),
        row=True,
    )
    if start:
        problems.append(("init_audio", start))
    elif "init_audio" in values:
        if folder is None:
            problems.append(("init_audio", "a file path is not accepted here; send the clip itself"))
        else:
            file = folder / values["init_audio"]
            problem = audio_file_problem(file, settings.DURATION_RANGE)
            if problem:
                problems.append(("init_audio", f"init_audio {values['init_audio']!r} ({file}): {problem}"))
            values["init_audio"] = str(file)
    problems += _references(record, values, folder)
    raw_id = record.get("id")
    if raw_id is None or str(raw_id).strip() == "":
        row_id = text_id(prompt)  # numbered on repeats by read_prompt_file
    else:
        row_id = str(raw_id).strip()
        if not ID_PATTERN.match(row_id):
            problems.append(
                (
                    "id",
                    f"id {row_id!r} is not usable in file names; use letters, digits, '.', '_', '-' "
                    f"(at most 128, not starting with '.', '_' or '-')",
                )
            )
        elif is_reserved_name(row_id):
            problems.append(
                (
                    "id",
                    f"id {row_id!r} is a reserved device name on Windows "
                    f"(CON, PRN, AUX, NUL, COM1-9, LPT1-9); libraries are copied there: choose another",
                )
            )
    if problems:
        return None, problems
    row = PromptRow(
        prompt=prompt,
        id=row_id,
        line=line,
        id_from_text=raw_id is None or str(raw_id).strip() == "",
        **values,
    )
    return row, []


def _references(record: dict, values: dict, folder: Path | None) -> list[tuple[str, str]]:
    """Check a row's reference clips (files relative to ``folder``) and their settings; ``values["reference"]``
    becomes their paths."""
    problem = settings.reference_problem(
        values.get("reference"), record.get("reference_caption"), record.get("reference_mode"), row=True
    )
    if problem:
        return [("reference", problem)]
    if not values.get("reference"):
        return []
    if folder is None:
        return [("reference", "file paths are not accepted here; send the clips themselves")]
    problems, files = [], []
    for name in values["reference"]:
        file = folder / name
        found = audio_file_problem(file, settings.DURATION_RANGE)
        if found:
            problems.append(("reference", f"reference {name!r} ({file}): {found}"))
        files.append(str(file))
    values["reference"] = tuple(files)  # rows are frozen and hashable
    return problems
