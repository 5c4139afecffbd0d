"""Replacing units of a chain: fresh incoming weights, zero outgoing weights, norm and optimizer reset."""

from __future__ import annotations

import math
from typing import Optional

import torch

from clight.methods.plasticity.chain import PER_UNIT_NORMS, Chain, UnitLayer
from clight.methods.plasticity.optim_state import reset_entries

INITS = ("default", "kaiming_uniform", "kaiming_normal", "kaiming_normal_fan_out", "xavier_uniform", "xavier_normal")


def check_init(init: str) -> str:
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return init


def draw_incoming(layer: UnitLayer, rows: int, generator: torch.Generator, init: str = "default") -> torch.Tensor:
    """``rows`` fresh rows of ``layer.weight`` from its initialiser, drawn with ``generator`` (on CPU,
    so the same seed gives the same values on every rank and device).

    ``default`` is PyTorch's own ``Linear``/``Conv2d`` initialiser (``kaiming_uniform_(a=sqrt(5))``,
    i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))); ``kaiming_normal_fan_out`` is what timm's ResNets use.
    """
    w = layer.weight
    shape = (rows,) + tuple(w.shape[1:])
    receptive = int(torch.tensor(w.shape[2:]).prod()) if w.dim() > 2 else 1
    fan_in = w.shape[1] * receptive
    fan_out = w.shape[0] * receptive
    if init in ("default", "kaiming_uniform"):
        gain = math.sqrt(2.0 / (1 + 5.0)) if init == "default" else math.sqrt(2.0)
        bound = gain * math.sqrt(3.0 / fan_in)
        out = (torch.rand(shape, generator=generator) * 2 - 1) * bound
    elif init in ("kaiming_normal", "kaiming_normal_fan_out"):
        fan = fan_in if init == "kaiming_normal" else fan_out
        out = torch.randn(shape, generator=generator) * math.sqrt(2.0 / fan)
    elif init == "xavier_uniform":
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        out = (torch.rand(shape, generator=generator) * 2 - 1) * bound
    elif init == "xavier_normal":
        out = torch.randn(shape, generator=generator) * math.sqrt(2.0 / (fan_in + fan_out))
    else:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return out.to(device=w.device, dtype=w.dtype)


@torch.no_grad()
def replace_units(
    chain: Chain,
    index: torch.Tensor,
    generator: torch.Generator,
    optimizer: Optional[torch.optim.Optimizer] = None,
    init: str = "default",
    mean_activation: Optional[torch.Tensor] = None,
) -> None:
    """Re-initialise units ``index`` of ``chain``.

    Incoming weights fresh, incoming bias 0, outgoing weights 0 (for a Linear reading a flattened
    conv map: the unit's whole block of columns), the following norm's entries reset (BatchNorm:
    weight 1, bias 0, running mean 0, var 1; LayerNorm: weight 1, bias 0) and the optimizer state
    of all these entries zeroed (with ``clight.optim.AdamPerEntryStep`` their step count too).

    Zeroing the outgoing weights removes the units' contribution, so the output is unchanged
    only for units that were dead (output 0 on the batch); a live unit's contribution is gone
    and the output moves by it. The fresh incoming weights add nothing on top (exactly, unless a
    LayerNorm sits between, see ``Chain.exact``).
    ``mean_activation`` (per unit of the whole layer): first add ``w_out[:, i] * mean_h_i`` to the
    consumer's bias, so the expected output is preserved (the released code's option; for a
    flattened map, the channel's mean over positions times the sum of its block of columns).
    """
    if index.numel() == 0:
        return
    unit, consumer, norm = chain.unit, chain.consumer, chain.norm
    idx = index.to(unit.weight.device)
    unit.weight[idx] = draw_incoming(unit, len(idx), generator, init)
    reset_entries(optimizer, unit.weight, idx, 0)
    if unit.bias is not None:
        unit.bias[idx] = 0
        reset_entries(optimizer, unit.bias, idx, 0)
    w_out = consumer.weight
    cols = chain.consumer_columns(idx)
    if mean_activation is not None and consumer.bias is not None:
        # per unit: its outgoing weights summed over a conv kernel or a block of columns
        outgoing = w_out[:, cols].reshape(w_out.shape[0], len(idx), -1).sum(dim=2)
        consumer.bias += outgoing @ mean_activation[idx].to(outgoing.dtype)
    w_out[:, cols] = 0
    reset_entries(optimizer, w_out, cols, 1)
    if norm is not None:
        if getattr(norm, "weight", None) is not None:
            norm.weight[idx] = 1
            reset_entries(optimizer, norm.weight, idx, 0)
        if getattr(norm, "bias", None) is not None:
            norm.bias[idx] = 0
            reset_entries(optimizer, norm.bias, idx, 0)
        if isinstance(norm, PER_UNIT_NORMS) and norm.running_mean is not None and norm.running_var is not None:
            norm.running_mean[idx] = 0
            norm.running_var[idx] = 1
