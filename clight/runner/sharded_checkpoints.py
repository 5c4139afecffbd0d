"""Checkpoints of a run whose parameters are sharded: folders, committed atomically.

Inside a fit, Lightning's ``ModelParallelStrategy`` writes an epoch checkpoint as a folder:
every rank writes its shards of the model and optimizer (``torch.distributed.checkpoint``,
DCP), rank 0 writes everything else to ``meta.pt``. clight writes it into a hidden temporary
folder and renames it into place once whole (``commit_checkpoint``), as it does with files.

At a task boundary the model's shards go to ``checkpoints/last_task/`` the same way (DCP, every
rank its own shards, no gathering); the methods' state, the data module's and the counters go
to its ``meta.pt``. A resume reads it back before the model is sharded again: every rank reads
whole tensors (DCP reshards on load), as it read the pretrained weights when the run started.
Everything is read with ``weights_only=True``.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from clight import io
from clight.io import UnreadableFileError, load_checkpoint

META = "meta.pt"
BOUNDARY_FOLDER = "checkpoints/last_task"


def holds_dtensors(state: Any) -> bool:
    """Whether a (nested) state holds a DTensor anywhere."""
    from torch.distributed.tensor import DTensor

    if isinstance(state, DTensor):
        return True
    if isinstance(state, dict):
        return any(holds_dtensors(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return any(holds_dtensors(v) for v in state)
    return False


def _sync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb+") as f:
                os.fsync(f.fileno())


def commit_folder(tmp: Path, path: Path) -> None:
    """Flush every file of the folder ``tmp`` and rename it to ``path``. A folder already at
    ``path`` is moved aside first and removed after, so a reader finds the old one or the new one."""
    tmp, path = Path(tmp), Path(path)
    _sync_tree(tmp)
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def commit_checkpoint(tmp: Path, path: Path) -> None:
    """A checkpoint written to ``tmp`` (a file, or a sharded folder) renamed into place, atomically."""
    if Path(tmp).is_dir():
        commit_folder(tmp, path)
    else:
        io.commit_file(tmp, path)  # through the module: a test that replaces io.commit_file sees every commit


def remove_checkpoint(path: Path) -> None:
    if Path(path).is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        Path(path).unlink(missing_ok=True)


def _tensor_shapes(folder: Path) -> dict[str, Any]:
    """The tensors a DCP folder holds: ``{key: TensorStorageMetadata}`` (reads the ``.metadata`` file only)."""
    from torch.distributed.checkpoint import FileSystemReader, TensorStorageMetadata

    try:
        metadata = FileSystemReader(str(folder)).read_metadata()
    except Exception as exc:  # a missing or damaged .metadata: DCP raises FileNotFoundError, pickle errors, ...
        raise UnreadableFileError(folder, f"not a whole sharded checkpoint ({type(exc).__name__}: {exc})") from exc
    return {k: m for k, m in metadata.state_dict_metadata.items() if isinstance(m, TensorStorageMetadata)}


def saved_tensor_keys(folder: Path, prefix: str) -> set[str]:
    """The keys of the tensors saved under ``prefix`` (``state_dict``: the model's) in a DCP folder."""
    start = f"{prefix}."
    return {k[len(start) :] for k in _tensor_shapes(Path(folder)) if k.startswith(start)}


def _read_meta(folder: Path) -> dict:
    if not (folder / META).is_file():
        raise UnreadableFileError(folder, f"no {META}: not a whole sharded checkpoint")
    return load_checkpoint(folder / META)


def read_epoch_checkpoint(path: Path) -> dict:
    """An epoch checkpoint's contents for checking it before a resume: a file as saved (tensors
    memory-mapped); a sharded folder as its ``meta.pt`` with the model's entries as empty
    tensors of their shapes (``device="meta"``: nothing is read) and the optimizer's listed."""
    path = Path(path)
    if not path.is_dir():
        return load_checkpoint(path, mmap=True)
    checkpoint = dict(_read_meta(path))
    shapes = _tensor_shapes(path)
    prefix = "state_dict."
    checkpoint["state_dict"] = {
        k[len(prefix) :]: torch.empty(tuple(m.size), device="meta") for k, m in shapes.items() if k.startswith(prefix)
    }
    checkpoint["optimizer_states"] = sorted({k.split(".")[0] for k in shapes if k.startswith("optimizer_")})
    return checkpoint


def save_sharded_boundary(folder: Path, state: dict) -> None:
    """The boundary state with a sharded ``state["model"]``: every rank writes its shards (DCP),
    rank 0 the rest; committed by rank 0 once every rank has written. Every rank must call it."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if dist.is_initialized():
        dist.barrier()
    dcp.save(dict(state["model"]), checkpoint_id=str(tmp))
    if rank == 0:
        torch.save({k: v for k, v in state.items() if k != "model"}, tmp / META)
        commit_folder(tmp, folder)
    if dist.is_initialized():
        dist.barrier()


def load_sharded_boundary(folder: Path) -> dict:
    """The boundary state with whole tensors (no process group needed: every rank reads all shards)."""
    import torch.distributed.checkpoint as dcp

    folder = Path(folder)
    state = dict(_read_meta(folder))
    model = {k: torch.empty(tuple(m.size), dtype=m.properties.dtype) for k, m in _tensor_shapes(folder).items()}
    try:
        with warnings.catch_warnings():  # that it reads in one process is the intent, not a surprise
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(model, checkpoint_id=str(folder), no_dist=True)
    except Exception as exc:
        raise UnreadableFileError(folder, f"its shards cannot be read ({type(exc).__name__}: {exc})") from exc
    state["model"] = model
    return state


def read_boundary(path: Path) -> Any:
    """The task-boundary checkpoint of a run folder: ``checkpoints/last_task.pt`` or, written by a
    sharded run, the folder ``checkpoints/last_task/``; the newer one if a run changed strategy."""
    path = Path(path)
    folder = path.with_suffix("")
    candidates = [p for p in (path, folder) if p.exists()]
    if not candidates:
        raise FileNotFoundError(f"{path} does not exist")
    newest: Optional[Path] = max(candidates, key=lambda p: p.stat().st_mtime)
    return load_sharded_boundary(newest) if newest.is_dir() else load_checkpoint(newest)
