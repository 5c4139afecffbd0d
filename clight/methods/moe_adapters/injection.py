"""Put MoE layers into a network's transformer blocks, peft-style: each chosen block is replaced
by an ``MoEBlock`` wrapping it, found and addressed by its qualified name."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from clight.contract import ConfigError
from clight.methods.moe_adapters.layer import MoEBlock, MoELayer, RouteState, RouterInput
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


def inject(network: nn.Module, num_tasks: int, state: RouteState, router_input: RouterInput,
           blocks: Optional[Sequence[str]] = None, tap: str = "mlp", generator: Optional[torch.Generator] = None,
           owner: str = "MoEAdapters", **layer_kwargs) -> dict[str, MoELayer]:
    """Freeze ``network`` and wrap its transformer blocks (those matching the regexes ``blocks``;
    all by default) with MoE layers sharing ``state``. ``tap``: ``mlp`` (the experts read the
    residual stream entering the block's MLP, the released code's) or ``block`` (the block's input).
    Returns ``{block name: layer}``."""
    found = transformer_blocks(network)
    if not found:
        raise ConfigError(f"{owner}: {type(network).__name__} has no transformer block left to wrap (another MoEAdapters "
                          "instance wraps them all?): give each instance its own `blocks`")
    chosen = select_blocks(found, blocks, owner)
    network.requires_grad_(False)
    layers: dict[str, MoELayer] = {}
    for name, norm in chosen:
        block = network.get_submodule(name)
        layer = MoELayer(_hidden_size(block, norm), num_tasks, state, router_input=router_input, generator=generator, **layer_kwargs)
        reference = next(block.parameters())
        layer.to(device=reference.device, dtype=reference.dtype)
        replace_module(network, name, MoEBlock(block, layer, norm if tap == "mlp" else None))
        layers[name] = layer
    return layers


def moe_blocks(network: nn.Module) -> dict[str, MoEBlock]:
    return {name: m for name, m in network.named_modules() if isinstance(m, MoEBlock)}
