"""The rank-consistency check: after a task, every rank must hold the same state.

With ``runner.check_rank_consistency: true`` the runner calls ``check_rank_consistency`` after
every fit's ``on_task_end`` hooks. Every rank hashes (BLAKE2b) each tensor and value it holds
that should be identical everywhere: the model's parameters and buffers (under sharding the
sharded parameters are this rank's own and are left out: FSDP keeps one copy of each shard),
every method's ``state_dict`` entry by entry (its ``replicated`` and ``reduced`` state; a
``sharded`` entry of a sharded run is a DTensor and is left out the same way) and the data
module's state (the replay memory). One ``all_gather_object`` of the digests follows; any
difference stops the run with ``RankMismatchError`` naming the owner, the entry and the ranks.
It costs one pass over the model's bytes per task: off by default, on in clight's tests.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterator, Optional

import torch

from clight.models.sharding import is_dtensor


class RankMismatchError(RuntimeError):
    """State that must be identical on every rank differs between ranks."""


def _digest(value: Any) -> str:
    if torch.is_tensor(value):
        tensor = value.detach().cpu().contiguous().flatten()
        data = tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header = f"{tensor.dtype}{tuple(value.shape)}".encode()
        return hashlib.blake2b(header + data, digest_size=16).hexdigest()
    text = json.dumps(value, sort_keys=True, default=repr)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _leaves(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """``(path, leaf)`` of a nested state; tensors are leaves, DTensors (sharded) are left out."""
    if is_dtensor(value):
        return
    if isinstance(value, dict):
        for key in sorted(value, key=str):
            yield from _leaves(value[key], f"{path}/{key}" if path else str(key))
    elif isinstance(value, (list, tuple)) and any(torch.is_tensor(v) or isinstance(v, (dict, list, tuple)) for v in value):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{path}[{i}]")
    else:
        yield path, value


def state_digests(module: torch.nn.Module, methods: list, datamodule: Any = None) -> dict[str, dict[str, str]]:
    """``{owner: {entry: digest}}`` of everything that must be identical on every rank."""
    digests: dict[str, dict[str, str]] = {"model": {}}
    for name, tensor in module.state_dict().items():
        if not is_dtensor(tensor):
            digests["model"][name] = _digest(tensor)
    for method in methods:
        digests[f"method {method.state_key}"] = {p: _digest(v) for p, v in _leaves(method.state_dict(), "")}
    if datamodule is not None and hasattr(datamodule, "state_dict"):
        digests["data module"] = {p: _digest(v) for p, v in _leaves(datamodule.state_dict(), "")}
    return digests


def first_difference(gathered: list[dict[str, dict[str, str]]]) -> Optional[str]:
    """Where the ranks' digests first differ from rank 0's, in words (``None``: nowhere)."""
    reference = gathered[0]
    for rank, digests in enumerate(gathered[1:], start=1):
        for owner in reference.keys() | digests.keys():
            mine, theirs = reference.get(owner, {}), digests.get(owner, {})
            for entry in sorted(mine.keys() | theirs.keys()):
                if mine.get(entry) != theirs.get(entry):
                    where = "is missing on one of them" if entry not in mine or entry not in theirs else "differs"
                    return f"{owner}: {entry or '(its whole state)'} {where} between rank 0 and rank {rank}"
    return None


def check_rank_consistency(module: torch.nn.Module, methods: list, datamodule: Any = None, task: Optional[int] = None) -> None:
    """Raise ``RankMismatchError`` on every rank if any rank's state differs from rank 0's."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if torch.distributed.get_world_size() < 2:
        return
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, state_digests(module, methods, datamodule))
    difference = first_difference(gathered)
    if difference is not None:
        after = f" after task {task}" if task is not None else ""
        raise RankMismatchError(
            f"rank consistency check{after}: {difference}. A method's state or an edit of the parameters is not the "
            "same on every rank: reduce its statistics across ranks, seed its generators from the run, or broadcast "
            "rank 0's result (docs/contract.md)."
        )
