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

from clight.models.sharding import is_sharded

BATCHED = "per-sample gradients batched with torch.func.vmap"
LOOPED = "one backward pass per sample"


class _TaskLoss(nn.Module):
    """``module.task_loss`` as a module's forward, so ``functional_call`` can swap its parameters."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.m = module

    def forward(self, batch: dict) -> torch.Tensor:
        return self.m.task_loss(batch)[0]


def _samples(dataset: Any, indices: list[int], module: nn.Module) -> dict:
    """The samples as a batch on the module's device, floating inputs in its weights' dtype (the
    Trainer's precision plugin does that for training batches; under bf16-true the weights are bfloat16)."""
    batch = (
        dataset.__getitems__(indices)
        if hasattr(dataset, "__getitems__")
        else torch.utils.data.default_collate([dataset[i] for i in indices])
    )
    dtype = next(module.parameters()).dtype

    def place(v: Any) -> Any:
        if not torch.is_tensor(v):
            return v
        return v.to(module.device, dtype=dtype) if v.is_floating_point() else v.to(module.device)

    return {k: place(v) for k, v in batch.items()}


def _batched(module: nn.Module, params: dict[str, nn.Parameter], dataset: Any, n: int, chunk: int) -> dict[str, torch.Tensor]:
    from torch.func import functional_call, grad, vmap

    wrapper = _TaskLoss(module)
    trainable = {f"m.{k}": p.detach() for k, p in params.items()}
    fixed = {f"m.{k}": t for k, t in module.named_parameters() if k not in params}
    fixed.update({f"m.{k}": t for k, t in module.named_buffers()})

    def one_loss(weights: dict, sample: dict) -> torch.Tensor:
        single = {k: v.unsqueeze(0) for k, v in sample.items()}
        return functional_call(wrapper, {**weights, **fixed}, (single,))

    per_sample = vmap(grad(one_loss), in_dims=(None, 0))
    fisher = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
    for start in range(0, n, chunk):
        batch = _samples(dataset, list(range(start, min(n, start + chunk))), module)
        grads = per_sample(trainable, {k: v for k, v in batch.items() if torch.is_tensor(v)})
        for k in fisher:
            fisher[k] += grads[f"m.{k}"].float().pow(2).sum(0) / n
    return fisher


def _looped(module: nn.Module, params: dict[str, nn.Parameter], dataset: Any, n: int) -> dict[str, torch.Tensor]:
    fisher = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
    for i in range(n):
        module.zero_grad(set_to_none=True)
        module.task_loss(_samples(dataset, [i], module))[0].backward()
        for k, p in params.items():
            if p.grad is not None:
                fisher[k] += p.grad.detach().float().pow(2) / n
    module.zero_grad(set_to_none=True)
    return fisher


def diagonal_fisher(module: nn.Module, dataset: Any, samples: int, chunk: int = 64) -> tuple[dict[str, torch.Tensor], str]:
    """Fisher of ``module``'s trainable parameters over the first ``samples`` items of ``dataset``
    (model in eval mode; float32 whatever the parameters' dtype), and how it was computed
    (``BATCHED`` or ``LOOPED``). With sharded parameters every rank runs the same per-sample
    backward passes (FSDP averages identical gradients: each rank gets its shard of the Fisher);
    ``torch.func`` does not run through FSDP's sharded parameters."""
    params = {k: p for k, p in module.named_parameters() if p.requires_grad}
    n = min(samples, len(dataset))
    was_training = module.training
    module.eval()
    try:
        if is_sharded(module):
            return _looped(module, params, dataset, n), LOOPED
        try:
            return _batched(module, params, dataset, n, chunk), BATCHED
        except (RuntimeError, NotImplementedError, TypeError, ValueError):
            return _looped(module, params, dataset, n), LOOPED
    finally:
        module.train(was_training)
