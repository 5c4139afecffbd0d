"""Per-sample gradient statistics: the diagonal empirical Fisher (EWC) and MAS's importance.

Both are means over samples of an element-wise function of one sample's gradient: the square of
the task loss's gradient (Fisher), the absolute value of the gradient of the output's squared
norm (MAS). Per-sample gradients come from ``torch.func`` (``vmap`` of ``grad`` over one
sample at a time), a chunk of samples per call. A model whose loss cannot run under ``vmap``
(data-dependent Python branching, in-place buffer updates) falls back to one backward pass per
sample; which path ran is returned so the run can record it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

BATCHED = "per-sample gradients batched with torch.func.vmap"
LOOPED = "one backward pass per sample"

Objective = Callable[[Any, dict], torch.Tensor]  # (module, batch of one sample) -> scalar
Statistic = Callable[[torch.Tensor], torch.Tensor]  # element-wise, on one sample's gradient


def task_loss_objective(module: Any, batch: dict) -> torch.Tensor:
    return module.task_loss(batch)[0]


class _Objective(nn.Module):
    """An objective of ``module`` as a module's forward, so ``functional_call`` can swap its parameters."""

    def __init__(self, module: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.m, self.objective = module, objective

    def forward(self, batch: dict) -> torch.Tensor:
        return self.objective(self.m, batch)


def fetch_samples(dataset: Any, indices: list[int], device: torch.device) -> dict:
    batch = (
        dataset.__getitems__(indices)
        if hasattr(dataset, "__getitems__")
        else torch.utils.data.default_collate([dataset[i] for i in indices])
    )
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _batched(
    module: nn.Module, params: dict, dataset: Any, indices: Sequence[int], objective: Objective, statistic: Statistic, chunk: int
) -> dict[str, torch.Tensor]:
    from torch.func import functional_call, grad, vmap

    wrapper = _Objective(module, objective)
    trainable = {f"m.{k}": p.detach() for k, p in params.items()}
    fixed = {f"m.{k}": t for k, t in module.named_parameters() if k not in params}
    fixed.update({f"m.{k}": t for k, t in module.named_buffers()})

    def one_sample(weights: dict, sample: dict) -> torch.Tensor:
        single = {k: v.unsqueeze(0) for k, v in sample.items()}
        return functional_call(wrapper, {**weights, **fixed}, (single,))

    per_sample = vmap(grad(one_sample), in_dims=(None, 0))
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    for start in range(0, len(indices), chunk):
        batch = fetch_samples(dataset, list(indices[start : start + chunk]), module.device)
        grads = per_sample(trainable, {k: v for k, v in batch.items() if torch.is_tensor(v)})
        for k in total:
            total[k] += statistic(grads[f"m.{k}"]).sum(0)
    return total


def _looped(
    module: nn.Module, params: dict, dataset: Any, indices: Sequence[int], objective: Objective, statistic: Statistic
) -> dict[str, torch.Tensor]:
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in indices:
        module.zero_grad(set_to_none=True)
        objective(module, fetch_samples(dataset, [int(i)], module.device)).backward()
        for k, p in params.items():
            if p.grad is not None:
                total[k] += statistic(p.grad.detach())
    module.zero_grad(set_to_none=True)
    return total


def per_sample_sum(
    module: nn.Module,
    dataset: Any,
    indices: Sequence[int],
    objective: Objective,
    statistic: Statistic,
    chunk: int = 64,
    params: Optional[dict[str, nn.Parameter]] = None,
) -> tuple[dict[str, torch.Tensor], str]:
    """``sum over the samples at indices of statistic(d objective / d theta)`` for ``module``'s
    trainable parameters (model in eval mode), and how it was computed (``BATCHED`` or ``LOOPED``)."""
    params = params if params is not None else {k: p for k, p in module.named_parameters() if p.requires_grad}
    was_training = module.training
    module.eval()
    try:
        try:
            return _batched(module, params, dataset, indices, objective, statistic, chunk), BATCHED
        except (RuntimeError, NotImplementedError, TypeError, ValueError):
            return _looped(module, params, dataset, indices, objective, statistic), LOOPED
    finally:
        module.train(was_training)


def diagonal_fisher(module: nn.Module, dataset: Any, samples: int, chunk: int = 64) -> tuple[dict[str, torch.Tensor], str]:
    """Fisher of ``module``'s trainable parameters over the first ``samples`` items of ``dataset``
    (model in eval mode), and how it was computed (``BATCHED`` or ``LOOPED``)."""
    n = min(samples, len(dataset))
    total, path = per_sample_sum(module, dataset, range(n), task_loss_objective, torch.square, chunk)
    return {k: v / n for k, v in total.items()}, path
