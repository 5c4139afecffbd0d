"""FSDP2 (``fully_shard``) applied to a ContinualModule, once per run, from ``configure_model``.

Units, in order: every transformer block (the classes a Hugging Face model lists in
``_no_split_modules``: ``LlamaDecoderLayer``, ``CLIPEncoderLayer``, ...; a model may name its
own with ``shard_units``), then every top-level child that holds parameters (the network, the
heads). A parameter is in exactly one unit, so FSDP2 gathers, reduces and shards all of them.

On a later fit the model is already sharded: only the submodules holding parameters that are
still plain tensors (added by a task since: a new head) are sharded, each as a unit of its own.
A parameter added directly to an already-sharded module cannot be sharded that way and is refused.
Modules a method fits itself, outside the optimizer (MoE adapters' DDAS autoencoders), are marked
with ``keep_whole`` and stay whole (replicated) on every rank.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

KEEP_WHOLE = "_clight_keep_whole"


def keep_whole(module: nn.Module) -> nn.Module:
    """Mark ``module`` to stay whole on every rank when the model around it is sharded (a module a
    method fits itself between fits, which FSDP must neither shard nor reduce)."""
    setattr(module, KEEP_WHOLE, True)
    return module


def _kept_whole(module: nn.Module) -> set[nn.Parameter]:
    return {p for m in module.modules() if getattr(m, KEEP_WHOLE, False) for p in m.parameters()}


def is_dtensor(tensor: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module``'s parameters are sharded (FSDP2 DTensors)."""
    return any(is_dtensor(p) for p in module.parameters())


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """The blocks of every Hugging Face model inside ``module`` (its ``_no_split_modules`` classes)."""
    names: set[str] = set()
    for m in module.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    return [m for m in module.modules() if type(m).__name__ in names]


@dataclass
class ShardingRecord:
    """What ``configure_model`` did in each fit: units sharded and seconds taken."""

    units: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def describe(self) -> dict:
        return {"units_sharded_per_fit": list(self.units), "seconds_per_fit": [round(s, 4) for s in self.seconds]}


def _plain_parameter_owners(module: nn.Module, whole_params: set[nn.Parameter]) -> list[nn.Module]:
    """The topmost submodules of ``module`` whose parameters are all plain tensors (not yet sharded),
    leaving out those kept whole."""
    owners: list[nn.Module] = []

    def visit(m: nn.Module, name: str) -> None:
        params = [p for p in m.parameters() if p not in whole_params]
        if not params:
            return
        if not any(is_dtensor(p) for p in params):
            owners.append(m)
            return
        direct = [n for n, p in m.named_parameters(recurse=False) if not is_dtensor(p) and p not in whole_params]
        if direct:
            raise RuntimeError(
                f"parameters {direct} were added directly to {name or 'the model'} ({type(m).__name__}) after it was "
                "sharded: a task must add parameters in new submodules (a head, an adapter) so they can be sharded on their own"
            )
        for child_name, child in m.named_children():
            visit(child, f"{name}.{child_name}" if name else child_name)

    visit(module, "")
    return owners


def _called_parts(module: nn.Module) -> list[nn.Module]:
    """The top-level parts of ``module`` that are called through their forward: its children, and
    the members of children that are containers (heads in a ``ModuleDict``), which FSDP can only
    gather inside a forward of their own."""
    parts: list[nn.Module] = []
    for child in module.children():
        if isinstance(child, (nn.ModuleDict, nn.ModuleList)):
            parts += _called_parts(child)
        elif isinstance(child, (nn.ParameterDict, nn.ParameterList)):
            raise RuntimeError(f"{type(module).__name__} keeps parameters in a {type(child).__name__}: FSDP cannot shard them")
        else:
            parts.append(child)
    return parts


def shard(module: nn.Module, mesh: Any, units: Iterable[nn.Module]) -> int:
    """Shard ``module`` with FSDP2 over ``mesh`` (blocks ``units`` first); on an already sharded
    module, only what was added since. Returns the number of units sharded now."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    own = [n for n, _ in module.named_parameters(recurse=False)]
    if own:
        raise RuntimeError(f"{type(module).__name__} holds parameters {own} itself: keep them in a submodule to shard it")
    whole_params = _kept_whole(module)

    def unit(m: nn.Module) -> None:
        fully_shard(m, mesh=mesh, ignored_params={p for p in m.parameters() if p in whole_params} or None)

    if is_sharded(module):
        new = _plain_parameter_owners(module, whole_params)
        for m in new:
            unit(m)
        return len(new)
    todo = [u for u in units if not isinstance(u, FSDPModule)]
    todo += [
        c for c in _called_parts(module) if any(p not in whole_params for p in c.parameters()) and not isinstance(c, FSDPModule)
    ]
    for m in todo:
        unit(m)
    return len(todo)


def shard_for_fit(module: Any, record: ShardingRecord) -> None:
    """``configure_model`` under ModelParallelStrategy: shard over its data-parallel mesh."""
    mesh = module.device_mesh
    if mesh is None:  # another strategy (DDP, one device): nothing to shard
        return
    if "tensor_parallel" in (mesh.mesh_dim_names or ()) and mesh["tensor_parallel"].size() > 1:
        raise RuntimeError("clight shards across data-parallel ranks only: set tensor_parallel_size=1")
    started = time.perf_counter()
    dp = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
    record.units.append(shard(module, dp, module.shard_units()))
    record.seconds.append(time.perf_counter() - started)


def reshard(module: nn.Module) -> None:
    """Free every gathered block of a sharded ``module`` (FSDP keeps the root's gathered after a
    forward without backward): between fits the parameters are their shards, as checkpoints and
    methods expect."""
    from torch.distributed.fsdp import FSDPModule

    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``tensor``: the local shard of a DTensor, the tensor itself otherwise."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The whole of ``tensor`` on every rank (a collective for a DTensor: every rank must call it)."""
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


def local_part(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``full``, sharded as ``like`` is (no communication)."""
    if not is_dtensor(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None).to_local()


def shard_of(tensor: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``tensor`` (whole, or a DTensor), laid out as ``param`` is: a state kept
    per parameter (a Fisher, an anchor) read next to the parameter's shard."""
    if is_dtensor(tensor):
        return local(tensor)
    return local_part(tensor, param)


def laid_out_like(tensor: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``tensor`` (whole) as a DTensor sharded like ``ref`` when ``ref`` is one (no communication)."""
    if is_dtensor(tensor) or not is_dtensor(ref):
        return tensor
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(tensor.to(local(ref).device), ref.device_mesh, ref.placements, src_data_rank=None)
