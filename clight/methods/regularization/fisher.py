"""The diagonal empirical Fisher: the mean over samples of squared per-sample gradients.

Per-sample gradients come from ``torch.func`` (``vmap`` of ``grad`` over the model's own
``task_loss`` on one sample at a time), a chunk of samples per call. A model whose loss
cannot run under ``vmap`` (data-dependent Python branching, in-place buffer updates) falls
back to one backward pass per sample; which path ran is returned so the run can record it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from clight.models.module import ContinualModule

BATCHED = "per-sample gradients batched with torch.func.vmap"
LOOPED = "one backward pass per sample"


class _TaskLoss(nn.Module):
    """``module.task_loss`` as a module's forward, so ``functional_call`` can swap its parameters."""

    def __init__(self, module: ContinualModule) -> None:
        super().__init__()
        self.m = module

    def forward(self, batch: dict) -> torch.Tensor:
        return self.m.task_loss(batch)[0]


def _samples(dataset: Any, indices: list[int], device: torch.device) -> dict:
    batch = (
        dataset.__getitems__(indices)
        if hasattr(dataset, "__getitems__")
        else torch.utils.data.default_collate([dataset[i] for i in indices])
    )
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _batched(
    module: ContinualModule, params: dict[str, nn.Parameter], dataset: Any, n: int, chunk: int
) -> dict[str, torch.Tensor]:
    from torch.func import functional_call, grad, vmap

    wrapper = _TaskLoss(module)
    trainable = {f"m.{k}": p.detach() for k, p in params.items()}
    fixed: dict[str, torch.Tensor] = {f"m.{k}": t for k, t in module.named_parameters() if k not in params}
    fixed.update({f"m.{k}": t for k, t in module.named_buffers()})

    def one_loss(weights: dict, sample: dict) -> torch.Tensor:
        single = {k: v.unsqueeze(0) for k, v in sample.items()}
        return functional_call(wrapper, {**weights, **fixed}, (single,))

    per_sample = vmap(grad(one_loss), in_dims=(None, 0))
    fisher = {k: torch.zeros_like(p) for k, p in params.items()}
    for start in range(0, n, chunk):
        batch = _samples(dataset, list(range(start, min(n, start + chunk))), module.device)
        grads = per_sample(trainable, {k: v for k, v in batch.items() if torch.is_tensor(v)})
        for k in fisher:
            fisher[k] += grads[f"m.{k}"].pow(2).sum(0) / n
    return fisher


def _looped(module: ContinualModule, params: dict[str, nn.Parameter], dataset: Any, n: int) -> dict[str, torch.Tensor]:
    fisher = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in range(n):
        module.zero_grad(set_to_none=True)
        module.task_loss(_samples(dataset, [i], module.device))[0].backward()
        for k, p in params.items():
            if p.grad is not None:
                fisher[k] += p.grad.detach().pow(2) / n
    module.zero_grad(set_to_none=True)
    return fisher


def diagonal_fisher(module: ContinualModule, dataset: Any, samples: int, chunk: int = 64) -> tuple[dict[str, torch.Tensor], str]:
    """Fisher of ``module``'s trainable parameters over the first ``samples`` items of ``dataset``
    (model in eval mode), and how it was computed (``BATCHED`` or ``LOOPED``)."""
    params = {k: p for k, p in module.named_parameters() if p.requires_grad}
    n = min(samples, len(dataset))
    was_training = module.training
    module.eval()
    try:
        try:
            return _batched(module, params, dataset, n, chunk), BATCHED
        except (RuntimeError, NotImplementedError, TypeError, ValueError):
            return _looped(module, params, dataset, n), LOOPED
    finally:
        module.train(was_training)
