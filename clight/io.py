"""Atomic writes and safe reads for run folders."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Union

import torch

PathLike = Union[str, Path]


def _atomic_replace(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
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


def load_checkpoint(path: PathLike) -> Any:
    """Load a clight checkpoint without unpickling arbitrary objects."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def read_json(path: PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)
