"""Rows of a CSV (with header) or JSONL file, numbered by line, problems collected as ``file:line: reason``.

The one reader behind prompt files and clip lists: each caller adds its own checks of the values.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

Records = list[tuple[int, dict]]


def numbered_lines(path: Path, problems: list[str]) -> list[tuple[int, str]]:
    """The file's lines with their numbers (a UTF-8 byte-order mark dropped); lines that are not
    UTF-8 go to ``problems`` and are left out."""
    lines = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            lines.append((number, raw.decode("utf-8-sig" if number == 1 else "utf-8")))
        except UnicodeDecodeError as exc:
            problems.append(f"{path}:{number}: not valid UTF-8 (byte {exc.start}); save the file as UTF-8")
    return lines


def read_records(
    path: Path,
    required: tuple[str, ...],
    problems: list[str],
    allowed: tuple[str, ...] | None = None,
    lines: list[tuple[int, str]] | None = None,
) -> Records:
    """(line number, row) pairs of a .csv or .jsonl file; problems go to ``problems``.

    ``required``: columns a CSV header must have; ``allowed``: the only columns or JSON fields
    accepted (None: any). CSV headers are matched case-insensitively; empty cells are left out
    of a row except in required columns. ``lines``: the file's :func:`numbered_lines`, if read.
    """
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        problems.append(f"{path}: give a .csv or .jsonl file")
        return []
    if lines is None:
        lines = numbered_lines(path, problems)
    if suffix == ".jsonl":
        return _jsonl_records(path, lines, problems, allowed)
    return _csv_records(path, lines, problems, required, allowed)


def _csv_records(path: Path, lines, problems: list[str], required, allowed) -> Records:
    if not lines:
        return []
    numbers = [n for n, _ in lines]
    reader = csv.reader(io.StringIO("\n".join(t for _, t in lines)))
    try:
        rows = list(reader)
    except csv.Error as exc:
        problems.append(f"{path}:{reader.line_num}: malformed CSV ({exc})")
        return []
    header = [h.strip().lower() for h in rows[0]] if rows else []
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        problems.append(f"{path}:{numbers[0]}: column(s) {repeated} appear more than once in the header")
        return []
    unknown = [h for h in header if allowed is not None and h not in allowed]
    if unknown:
        problems.append(f"{path}:{numbers[0]}: unknown column(s) {unknown}; valid: {', '.join(allowed)}")
        return []
    missing = [c for c in required if c not in header]
    if missing:
        named = ", ".join(repr(c) for c in missing) + (" column" if len(missing) == 1 else " columns")
        needs = f"valid: {', '.join(allowed)}" if allowed is not None else f"needs {', '.join(required)}"
        problems.append(f"{path}:{numbers[0]}: the header has no {named} ({needs})")
        return []
    out = []
    # csv rows can span lines inside quotes; count lines to report the row's first line.
    line_index = 1
    for row in rows[1:]:
        number = numbers[min(line_index, len(numbers) - 1)]
        line_index += 1 + sum(cell.count("\n") for cell in row)
        if not any(cell.strip() for cell in row):
            continue
        spans = sum(cell.count("\n") for cell in row)
        if spans:
            # A quote opened and not closed on its line swallows the lines after it (four prompts
            # become one): fields that run over lines are refused, whatever their quoting.
            problems.append(
                f"{path}:{number}: a quoted field runs over {spans + 1} lines (to line "
                f"{numbers[min(line_index - 1, len(numbers) - 1)]}): a stray quote? Close each quote on its own line"
            )
            continue
        if len(row) != len(header):
            problems.append(f"{path}:{number}: {len(row)} cells, the header has {len(header)}")
            continue
        out.append((number, {h: v for h, v in zip(header, row) if v.strip() != "" or h in required}))
    return out


def _jsonl_records(path: Path, lines, problems: list[str], allowed) -> Records:
    out = []
    for number, text in lines:
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(record, dict):
            problems.append(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            continue
        unknown = sorted(set(record) - set(allowed)) if allowed is not None else []
        if unknown:
            problems.append(f"{path}:{number}: unknown field(s) {unknown}; valid: {', '.join(allowed)}")
            continue
        out.append((number, record))
    return out
