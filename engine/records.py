"""Rows of a CSV (with header) or JSONL file, numbered by line, problems collected as ``file:line: reason``."""

from __future__ import annotations

import csv
import json
from pathlib import Path


def read_records(path: Path, required: tuple[str, ...], problems: list[str]) -> list[tuple[int, dict]]:
    """(line number, row) pairs; bad JSON lines and a CSV header lacking ``required`` go to ``problems``."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        problems.append(f"{path}:{line}: not valid UTF-8 (byte {exc.start}); save the file as UTF-8")
        return []
    if path.suffix.lower() == ".jsonl":
        out = []
        for line, raw in enumerate(text.splitlines(), start=1):
            if raw.strip():
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError as exc:
                    problems.append(f"{path}:{line}: invalid JSON ({exc.msg})")
                    continue
                if not isinstance(record, dict):
                    problems.append(f"{path}:{line}: expected a JSON object, got {type(record).__name__}")
                    continue
                out.append((line, record))
        return out
    if path.suffix.lower() != ".csv":
        problems.append(f"{path}: give a .csv or .jsonl file")
        return []
    reader = csv.DictReader(text.splitlines())
    missing = set(required) - set(reader.fieldnames or [])
    if missing:
        problems.append(f"{path}:1: header lacks column(s) {sorted(missing)}; needs {', '.join(required)}")
        return []
    return [(i, row) for i, row in enumerate(reader, start=2)]
