"""Resetting the optimizer state of exactly the entries a method changed.

Every per-entry state tensor the optimizer keeps for a parameter (a tensor of the parameter's
shape: Adam/AdamW ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``; SGD ``momentum_buffer``;
RMSprop ``square_avg``, ...) is set to 0 at the changed entries; all other entries are left
exactly as they were. Adam's ``step`` is one count per *parameter*, not per entry, so it is
left alone: a reset entry's first updates are then bias-corrected with the parameter's step
count, i.e. barely at all (the released code used an Adam variant with a per-entry step, which
restarts bias correction for the new unit; torch's Adam cannot).
"""

from __future__ import annotations

from typing import Optional

import torch


def reset_entries(optimizer: Optional[torch.optim.Optimizer], param: torch.Tensor, index: torch.Tensor, dim: int = 0) -> int:
    """Zero ``optimizer``'s per-entry state of ``param`` at ``index`` along ``dim``; returns how
    many state tensors were touched."""
    if optimizer is None:
        return 0
    state = optimizer.state.get(param)
    if not state:
        return 0
    touched = 0
    for value in state.values():
        if isinstance(value, torch.Tensor) and value.shape == param.shape and value.dim() > 0:
            value.index_fill_(dim, index.to(value.device), 0)
            touched += 1
    return touched


def optimizer_of(trainer) -> Optional[torch.optim.Optimizer]:
    """The run's (first) optimizer, or ``None`` outside a fit."""
    optimizers = getattr(trainer, "optimizers", None) if trainer is not None else None
    return optimizers[0] if optimizers else None
