"""Atomic writes, appends and safe reads for run folders.

Every file clight writes is written to a temporary name next to it (``.NAME.PID.RANDOM.tmp``:
unique per writer, created with the umask's permissions), flushed to disk, then renamed into
place (``commit_file``): a reader, or a run resumed after a kill, sees the old file or the whole
new one. A write that fails because of the disk raises ``StorageError`` naming the file and the
disk. ``remove_leftovers`` deletes the temporary files of killed writes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import secrets
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch

from clight.disks import StorageError as StorageError  # re-exported: clight.io is where writes fail
from clight.disks import disk_error

PathLike = Union[str, Path]
#: the temporary files of clight's writes: ``.NAME.PID.RANDOM.tmp``
TEMP_NAME = re.compile(r"\..+\.\d+\.[0-9a-f]{8}\.tmp")
#: the longest CSV field read (Python's csv module stops at 128 KiB; a long document is longer)
CSV_FIELD_LIMIT = 16 * 2**20


class UnreadableFileError(ValueError):
    """A file clight wrote (or was given) that cannot be read back: truncated, corrupt or not what it should be.

    ``advice``: what to do, for files the user wrote (clight's own files are restored from a copy)."""

    def __init__(self, path: PathLike, reason: str, advice: Optional[str] = None) -> None:
        super().__init__(f"{path} cannot be read: {reason}")
        self.path, self.reason, self.advice = Path(path), reason, advice


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


def _new_temp(path: Path) -> Path:
    """An empty file next to ``path`` that no other writer uses, with the umask's permissions."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to (by any library); when the block ends
    without an error it is renamed into place, else deleted. Disk errors become ``StorageError``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temp(path)
        yield tmp
        commit_file(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        error = disk_error(path, exc)
        if error is not None and error is not exc:
            raise error from exc
        raise


def _open_temp(tmp: Path):
    return open(tmp, "wb")


def _open_append(path: Path):
    return open(path, "a", newline="")


def _atomic_replace(path: Path, write) -> None:
    with atomic_output(path) as tmp, _open_temp(tmp) as f:
        write(f)


def write_text_atomic(path: PathLike, text: str) -> None:
    _atomic_replace(Path(path), lambda f: f.write(text.encode()))


def write_json_atomic(path: PathLike, obj: Any) -> None:
    write_text_atomic(path, json_text(obj) + "\n")


def json_text(obj: Any, level: int = 0) -> str:
    """``json.dumps(obj, indent=2)``, except that a list of plain values (a matrix row) stays on one
    line: easier to read, and encoded by ``json``'s C encoder, where ``indent`` takes its pure-Python
    one (a 100 x 100 accuracy matrix: ten milliseconds after every task of a run)."""
    pad = "  " * (level + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{pad}{_ENCODER.encode(str(k))}: {json_text(v, level + 1)}" for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)) and obj and all(isinstance(v, (list, tuple)) for v in obj):
        text = _ENCODER.encode(obj)  # a matrix: one encoder call, then a line per row
        if '"' not in text:  # no strings, whose text the row breaks could reach
            return text.replace("], [", f"],\n{pad}[").replace("[[", f"[\n{pad}[", 1)[:-2] + f"]\n{pad[:-2]}]"
        items = [pad + json_text(v, level + 1) for v in obj]
    elif isinstance(obj, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in obj):
        items = [pad + json_text(v, level + 1) for v in obj]
    else:
        return _ENCODER.encode(obj)
    opening, closing = ("{", "}") if isinstance(obj, dict) else ("[", "]")
    return f"{opening}\n" + ",\n".join(items) + f"\n{'  ' * level}{closing}"


def save_tensors_atomic(path: PathLike, obj: Any) -> None:
    """``torch.save`` through a temporary file, so a kill never leaves half a checkpoint."""
    _atomic_replace(Path(path), lambda f: torch.save(obj, f))


def append_text(path: PathLike, text: str, durable: bool = True) -> None:
    """Append ``text`` to ``path`` (created if missing); ``durable``: flushed to disk (else the
    caller does it with ``sync_file`` before anything that counts on it is committed)."""
    path = Path(path)
    try:
        with _open_append(path) as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
    except OSError as exc:
        error = disk_error(path, exc)
        if error is not None:
            raise error from exc
        raise


def sync_file(path: PathLike) -> None:
    """Flush what was written to ``path`` to disk."""
    try:
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
    except OSError as exc:
        error = disk_error(path, exc)
        if error is not None:
            raise error from exc
        raise


def unwritable_reason(path: PathLike) -> Optional[str]:
    """Why the folder ``path`` (created when needed) could not be written, or ``None``: tried by
    creating and deleting a file in it or in its nearest existing parent (nothing stays)."""
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file"
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as exc:
        return f"cannot write to {existing} ({exc.strerror or exc})"
    return None


def remove_leftovers(folder: PathLike) -> list[Path]:
    """Delete the temporary files killed writes left in ``folder`` and the folders below it (three
    deep, as in a run folder): clight's own names only (``.NAME.PID.RANDOM.tmp``); returns them."""
    found = [
        p
        for depth in range(1, 4)
        for p in Path(folder).glob("/".join(["*"] * depth))
        if TEMP_NAME.fullmatch(p.name) and p.is_file()
    ]
    for path in found:
        path.unlink(missing_ok=True)
    return found


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


def read_text(path: PathLike, encoding: str = "utf-8") -> str:
    """The text of a file the user gave; bytes that are not ``encoding`` are named by line and offset."""
    data = Path(path).read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UnreadableFileError(
            path,
            f"line {line} (byte {exc.start}) holds {data[exc.start : exc.end]!r}, which is not {encoding} text",
            f"Save the file as {encoding}, or give its encoding",
        ) from None


def read_jsonl(path: PathLike) -> list[dict]:
    """The objects of a JSON-lines file, one per non-empty line; a bad line is named with its number."""
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UnreadableFileError(
                path, f"line {number} is not valid JSON ({exc}); every line must be one JSON object", _FIX_DATA
            ) from exc
        if not isinstance(row, dict):
            raise UnreadableFileError(path, f"line {number} holds a {type(row).__name__}, not a JSON object", _FIX_DATA)
        rows.append(row)
    if not rows:
        raise UnreadableFileError(path, "it holds no JSON objects (it is empty or blank)", _FIX_DATA)
    return rows


def read_csv_rows(path: PathLike, encoding: str = "utf-8") -> list[dict]:
    """The rows of a CSV file with a header line; a malformed row is named with its line."""
    reader = csv.DictReader(io.StringIO(read_text(path, encoding), newline=""))
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, CSV_FIELD_LIMIT))
    try:
        rows = list(reader)
    except csv.Error as exc:
        too_long = "field limit" in str(exc)  # raised before the line it is on is counted
        hint = f" (over {CSV_FIELD_LIMIT // 2**20} MiB: is a quote left open?)" if too_long else ""
        raise UnreadableFileError(path, f"line {reader.line_num + too_long}: {exc}{hint}", _FIX_DATA) from None
    finally:
        csv.field_size_limit(limit)
    if not rows or not any(any((v or "").strip() for v in row.values() if isinstance(v, str)) for row in rows):
        raise UnreadableFileError(path, "it holds no rows below its header (it is empty or blank)", _FIX_DATA)
    return rows


_FIX_DATA = "Fix the file, or point the config at another one"


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


_ENCODER = json.JSONEncoder(default=_json_default)  # one encoder for every row: json.dumps(default=...) builds one per call
