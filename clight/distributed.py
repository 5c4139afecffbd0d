"""Which process this is, and how processes agree: one place for rank questions."""

from __future__ import annotations

import os
import sys
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def _group_up() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def global_rank() -> int:
    """This process's rank: the process group's when one is up, else what the launcher set in
    the environment (Lightning reads RANK / LOCAL_RANK / SLURM_PROCID at import)."""
    if _group_up():
        return torch.distributed.get_rank()
    rank_zero = sys.modules.get("lightning.fabric.utilities.rank_zero")
    if rank_zero is not None:  # a launched strategy may have set it since
        return int(getattr(rank_zero.rank_zero_only, "rank", 0) or 0)
    # Lightning's own order, without importing Lightning (`clight report` does not need it)
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key):
            return int(os.environ[key])
    return 0


def world_size() -> int:
    return torch.distributed.get_world_size() if _group_up() else 1


def is_rank_zero() -> bool:
    return global_rank() == 0


def broadcast_from_rank_zero(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (a no-op in a single process)."""
    if not _group_up() or torch.distributed.get_world_size() == 1:
        return obj
    holder: list[Any] = [obj]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier() -> None:
    if _group_up():
        torch.distributed.barrier()


def _several() -> bool:
    return _group_up() and torch.distributed.get_world_size() > 1


def sum_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over every rank (the same tensor on each); ``value`` itself in one process.
    The tensor must live where the process group's backend expects it (CUDA for NCCL)."""
    if not _several():
        return value
    value = value.clone()
    torch.distributed.all_reduce(value)
    return value


def gather_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """Every rank's ``value`` (equal shapes) concatenated along dim 0 in rank order, on every rank."""
    if not _several():
        return value
    parts = [torch.empty_like(value) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, value.contiguous())
    return torch.cat(parts)


def broadcast_from_rank_zero_(value: torch.Tensor) -> torch.Tensor:
    """Overwrite ``value`` in place with rank 0's (equal shapes on every rank) and return it."""
    if _several():
        torch.distributed.broadcast(value, src=0)
    return value


def strategy_name(strategy: Any) -> str:
    """The strategy as a config names it: the string itself, or the class name of an instance."""
    return strategy if isinstance(strategy, str) else type(strategy).__name__


def is_model_parallel(strategy: Any) -> bool:
    from lightning.pytorch.strategies import ModelParallelStrategy

    return isinstance(strategy, ModelParallelStrategy)


def shards_parameters(strategy: Any) -> bool:
    """Whether ``strategy`` (a config value or a Trainer's strategy) keeps each parameter in shards."""
    if isinstance(strategy, str):
        return strategy == "sharded" or strategy.startswith(("fsdp", "deepspeed"))
    return is_model_parallel(strategy) or strategy_name(strategy) in ("FSDPStrategy", "DeepSpeedStrategy")
