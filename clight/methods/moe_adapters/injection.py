"""Put MoE layers into a network's transformer blocks, peft-style: each chosen block is replaced
by an ``MoEBlock`` wrapping it, found and addressed by its qualified name."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from clight.contract import ConfigError
from clight.methods.moe_adapters.layer import MoEBlock, MoELayer, RouterInput, RouteState
from clight.methods.moe_adapters.targets import select_blocks, transformer_blocks


def _hidden_size(block: nn.Module, tap: str) -> int:
    norm = block.get_submodule(tap)
    shape = getattr(norm, "normalized_shape", None)
    if shape is not None:
        return int(shape[-1])
    weight = getattr(norm, "weight", None)
    if weight is None:
        raise ConfigError(f"cannot tell the width of {type(block).__name__}: its {tap} has no weight")
    return int(weight.shape[-1])


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    new.train(root.get_submodule(name).training)
    setattr(parent, child, new)


def qualified_name(root: nn.Module, module: nn.Module) -> str:
    """``module``'s name inside ``root`` (``""`` for ``root`` itself)."""
    return next(name for name, m in root.named_modules() if m is module)


def choose_blocks(
    root: nn.Module, networks: Sequence[nn.Module], patterns: Optional[Sequence[str]], owner: str = "MoEAdapters"
) -> list[list[tuple[str, str]]]:
    """For each network, its ``(name, tap)`` blocks whose name inside ``root`` matches a regex of
    ``patterns`` (every block for ``None``); a ``ConfigError`` when none is left to wrap."""
    prefixes = [qualified_name(root, n) for n in networks]
    full = [(f"{p}.{name}" if p else name, tap) for p, n in zip(prefixes, networks) for name, tap in transformer_blocks(n)]
    if not full:
        raise ConfigError(
            f"{owner}: {type(root).__name__} has no transformer block left to wrap (another MoEAdapters "
            "instance wraps them all?): give each instance its own `blocks`"
        )
    chosen = {name for name, _ in select_blocks(full, patterns, owner)}
    return [
        [(name, tap) for name, tap in transformer_blocks(n) if (f"{p}.{name}" if p else name) in chosen]
        for p, n in zip(prefixes, networks)
    ]


def inject(
    network: nn.Module,
    blocks: Sequence[tuple[str, str]],
    num_tasks: int,
    state: RouteState,
    router_input: RouterInput,
    tap: str = "mlp",
    generator: Optional[torch.Generator] = None,
    **layer_kwargs,
) -> list[MoELayer]:
    """Wrap ``network``'s ``blocks`` (``(name, norm before the MLP)``) with MoE layers sharing
    ``state`` (the caller freezes the pretrained weights). ``tap``: ``mlp`` (the experts read the
    residual stream entering the block's MLP, the released code's) or ``block`` (the block's input)."""
    layers = []
    for name, norm in blocks:
        block = network.get_submodule(name)
        reference = next(block.parameters())
        layer = MoELayer(
            _hidden_size(block, norm), num_tasks, state, router_input=router_input, generator=generator, **layer_kwargs
        )
        layer.to(device=reference.device, dtype=reference.dtype)
        replace_module(network, name, MoEBlock(block, layer, norm if tap == "mlp" else None))
        layers.append(layer)
    return layers


def moe_blocks(network: nn.Module) -> dict[str, MoEBlock]:
    return {name: m for name, m in network.named_modules() if isinstance(m, MoEBlock)}
