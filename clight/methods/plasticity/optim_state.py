"""Resetting the optimizer state of exactly the entries a method changed.

Every per-entry state tensor the optimizer keeps for a parameter (a tensor of the parameter's
shape: Adam/AdamW ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``; SGD ``momentum_buffer``;
RMSprop ``square_avg``; the per-entry ``step`` of ``clight.optim.AdamPerEntryStep``, ...) is set
to 0 at the changed entries; all other entries are left exactly as they were.

The step count decides how a reset entry's first Adam updates are bias-corrected:

- per entry (``AdamPerEntryStep``, like the released code's ``AdamGnT``): the entry's step is
  reset with its moments, so bias correction restarts and its first update is 1x the learning
  rate;
- per tensor (torch's Adam/AdamW): one count per *parameter*, which cannot be reset for some
  entries only, so it is kept; the reset entry is bias-corrected with the parameter's large step
  count while its moments restart from 0, and its first update is up to ``0.1 / sqrt(0.001)``,
  about 3.16x the learning rate (less while the step count is small).
"""

from __future__ import annotations

from typing import Optional

import torch

STEP_COUNT_KINDS = {
    "per_entry": "per entry (e.g. clight.optim.AdamPerEntryStep): a replaced entry's step restarts at 0, so its first "
    "Adam update is 1x the learning rate",
    "per_tensor": "per tensor (e.g. torch.optim.Adam): replaced entries keep the parameter's step count while their "
    "moments restart from 0, so their first Adam update is up to ~3.16x the learning rate",
    "none": "the optimizer keeps no step count (e.g. SGD)",
}


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


def step_count_kind(optimizer: Optional[torch.optim.Optimizer]) -> Optional[str]:
    """How ``optimizer`` counts steps: ``"per_entry"``, ``"per_tensor"`` or ``"none"`` (see
    ``STEP_COUNT_KINDS``); ``None`` without an optimizer. Read from its state, so call it after
    the optimizer has stepped (an optimizer that has not stepped yet holds no step count)."""
    if optimizer is None:
        return None
    if getattr(optimizer, "per_entry_step", False):
        return "per_entry"
    for param, state in optimizer.state.items():
        step = state.get("step")
        if step is not None:
            per_entry = isinstance(step, torch.Tensor) and step.dim() > 0 and step.shape == param.shape
            return "per_entry" if per_entry else "per_tensor"
    return "none"
