"""Atomic writes and safe reads for run folders."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Union

import torch

PathLike = Union[str, Path]


class UnreadableFileError(ValueError):
    """A file clight wrote (or was given) that cannot be read back: truncated, corrupt or not what it should be."""

    def __init__(self, path: PathLike, reason: str) -> None:
        super().__init__(f"{path} cannot be read: {reason}")
        self.path, self.reason = Path(path), reason


def _sync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit_file(tmp: PathLike, path: PathLike) -> None:
    """Flush ``tmp`` to disk and rename it to ``path``: readers see the old file or the whole new one."""
    tmp, path = Path(tmp), Path(path)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _sync_folder(path.parent)


def _atomic_replace(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        commit_file(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: PathLike, text: str) -> None:
    _atomic_replace(Path(path), lambda f: f.write(text.encode()))


def write_json_atomic(path: PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def save_tensors_atomic(path: PathLike, obj: Any) -> None:
    """``torch.save`` through a temporary file, so a kill never leaves half a checkpoint."""
    _atomic_replace(Path(path), lambda f: torch.save(obj, f))


def load_checkpoint(path: PathLike, mmap: bool = False) -> Any:
    """Load a clight checkpoint without unpickling arbitrary objects (``weights_only=True``).

    A truncated or corrupt file raises ``UnreadableFileError`` naming it. ``mmap=True`` reads
    the structure and maps the tensors without copying them: a cheap check that a file is whole.
    """
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for damaged files
        raise UnreadableFileError(path, f"truncated or corrupt ({_first_line(exc)})") from exc


def read_json(path: PathLike) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise UnreadableFileError(path, f"not valid JSON, truncated or corrupt ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise UnreadableFileError(path, f"not a text file ({exc})") from exc


def read_jsonl(path: PathLike) -> list[dict]:
    """The objects of a JSON-lines file, one per non-empty line; a bad line is named with its number."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UnreadableFileError(path, f"not a UTF-8 text file ({exc})") from exc
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UnreadableFileError(
                path, f"line {number} is not valid JSON ({exc}); every line must be one JSON object"
            ) from exc
        if not isinstance(row, dict):
            raise UnreadableFileError(path, f"line {number} holds a {type(row).__name__}, not a JSON object")
        rows.append(row)
    return rows


def _first_line(exc: BaseException) -> str:
    """``Type: first sentence`` of an exception's message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0].split('. ')[0]}" if text else type(exc).__name__


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)
