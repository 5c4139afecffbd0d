"""Records of a data file, each with where it is (file, line, record number), so that a bad one is
reported where the user can find it.

``read_records`` reads a JSON array (``.json``) or JSON lines (``.jsonl``; also a ``.json`` file
holding one object per line). Every problem is a ``RecordError``: one line, ``FILE line N
(record K): what is wrong. What to do.``, a ``ValueError`` (``clight`` exits with status 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

PathLike = Union[str, Path]


class RecordError(ValueError):
    """A data file or one of its records that cannot be used, located in the file."""

    def __init__(self, path: PathLike, problem: str, line: Optional[int] = None, record: Optional[int] = None) -> None:
        where = str(path)
        if line is not None:
            where += f" line {line}"
        if record is not None:
            where += f" (record {record})"
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class Record:
    """One record: its fields, its file, the line it starts on (``None`` for a dataset row) and
    its 1-based number."""

    data: dict[str, Any]
    path: str
    line: Optional[int]
    number: int

    def error(self, problem: str) -> RecordError:
        return RecordError(self.path, problem, self.line, self.number)

    def text(self, key: str, fix: str, optional: bool = False) -> Optional[str]:
        """The string field ``key``; a missing or non-string field is a ``RecordError`` ending in ``fix``."""
        value = self.data.get(key)
        if value is None:
            if optional:
                return None
            raise self.error(f"no {key!r} field (fields: {sorted(self.data)}). {fix}")
        if not isinstance(value, str):
            raise self.error(f"{key!r} is a {type(value).__name__}, not a string. {fix}")
        return value


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _json_array(text: str, path: PathLike) -> list[tuple[int, Any]]:
    """The elements of a JSON array with the character offset each starts at."""
    decoder = json.JSONDecoder()
    n, i = len(text), 0

    def skip(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    i = skip(i)
    if i >= n or text[i] != "[":
        raise RecordError(path, "is not a JSON array of records: write [ {...}, {...} ] or one JSON object per line (.jsonl)")
    i = skip(i + 1)
    items: list[tuple[int, Any]] = []
    if i < n and text[i] == "]":
        return items
    while True:
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise RecordError(path, f"is not valid JSON ({exc.msg})", _line_of(text, exc.pos), len(items) + 1) from None
        items.append((i, value))
        i = skip(end)
        if i < n and text[i] == ",":
            i = skip(i + 1)
        elif i < n and text[i] == "]":
            if skip(i + 1) != n:
                raise RecordError(path, "has text after the closing ]: it must hold one JSON array", _line_of(text, i + 1))
            return items
        else:
            raise RecordError(path, "is not valid JSON (expected , or ] after a record)", _line_of(text, i), len(items))


def _json_lines(text: str, path: PathLike) -> list[tuple[int, Any]]:
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise RecordError(
                path, f"is not valid JSON ({exc.msg}): every line of a .jsonl file is one JSON object", number, len(items) + 1
            ) from None
    return items


def read_records(path: PathLike) -> list[Record]:
    """Every record of ``path`` (a JSON array, or JSON lines), each a JSON object, with its location."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(path, "does not exist: check the path (relative paths start from the folder clight runs in)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(path, f"is not a UTF-8 text file ({exc.reason})") from None
    if text.lstrip().startswith("["):
        located = [(_line_of(text, offset), value) for offset, value in _json_array(text, path)]
    else:
        located = _json_lines(text, path)
    records = []
    for number, (line, value) in enumerate(located, 1):
        if not isinstance(value, dict):
            raise RecordError(path, f"holds a {type(value).__name__}, not a JSON object", line, number)
        records.append(Record(value, str(path), line, number))
    return records
