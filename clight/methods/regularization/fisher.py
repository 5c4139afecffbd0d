"""Per-sample gradient statistics: the diagonal empirical Fisher (EWC) and MAS's importance.

Both are means over samples of an element-wise function of one sample's gradient: the square of
the task loss's gradient (Fisher), the absolute value of the gradient of the output's squared
norm (MAS). Per-sample gradients come from ``torch.func`` (``vmap`` of ``grad`` over one
sample at a time), a chunk of samples per call. A model whose loss cannot run under ``vmap``
(data-dependent Python branching, in-place buffer updates) falls back to one backward pass per
sample; which path ran is returned so the run can record it.

``path="auto"`` (what EWC uses) picks the faster path by ``choose_path``: a rule, not a timing, so
every rank and every resumed run computes the same Fisher to the last bit.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional, Sequence

import torch
from lightning.pytorch import LightningModule
from torch import nn

from clight.models.sharding import is_sharded

FisherPath = Literal["auto", "batched", "looped"]

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


def fetch_samples(dataset: Any, indices: list[int], device: torch.device, dtype: Optional[torch.dtype] = None) -> dict:
    """The samples as a batch on ``device``; floating inputs in ``dtype`` if given (the weights'
    dtype: the Trainer's precision plugin does that for training batches, and under bf16-true the
    weights are bfloat16)."""
    batch = (
        dataset.__getitems__(indices)
        if hasattr(dataset, "__getitems__")
        else torch.utils.data.default_collate([dataset[i] for i in indices])
    )

    def place(v: Any) -> Any:
        if not torch.is_tensor(v):
            return v
        return v.to(device, dtype=dtype) if dtype is not None and v.is_floating_point() else v.to(device)

    return {k: place(v) for k, v in batch.items()}


def _weights_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _batched(
    module: LightningModule,
    params: dict,
    dataset: Any,
    indices: Sequence[int],
    objective: Objective,
    statistic: Statistic,
    chunk: int,
) -> dict[str, torch.Tensor]:
    from torch.func import functional_call, grad, vmap

    wrapper = _Objective(module, objective)
    trainable = {f"m.{k}": p.detach() for k, p in params.items()}
    fixed: dict[str, torch.Tensor] = {f"m.{k}": t for k, t in module.named_parameters() if k not in params}
    fixed.update({f"m.{k}": t for k, t in module.named_buffers()})

    def one_sample(weights: dict, sample: dict) -> torch.Tensor:
        single = {k: v.unsqueeze(0) for k, v in sample.items()}
        return functional_call(wrapper, {**weights, **fixed}, (single,))

    per_sample = vmap(grad(one_sample), in_dims=(None, 0))
    total = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
    dtype = _weights_dtype(module)
    for start in range(0, len(indices), chunk):
        batch = fetch_samples(dataset, list(indices[start : start + chunk]), module.device, dtype)
        grads = per_sample(trainable, {k: v for k, v in batch.items() if torch.is_tensor(v)})
        for k in total:
            total[k] += statistic(grads[f"m.{k}"].float()).sum(0)
    return total


def _looped(
    module: LightningModule, params: dict, dataset: Any, indices: Sequence[int], objective: Objective, statistic: Statistic
) -> dict[str, torch.Tensor]:
    total = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
    dtype = _weights_dtype(module)
    for i in indices:
        module.zero_grad(set_to_none=True)
        objective(module, fetch_samples(dataset, [int(i)], module.device, dtype)).backward()
        for k, p in params.items():
            if p.grad is not None:
                total[k] += statistic(p.grad.detach().float())
    module.zero_grad(set_to_none=True)
    return total


def per_sample_sum(
    module: LightningModule,
    dataset: Any,
    indices: Sequence[int],
    objective: Objective,
    statistic: Statistic,
    chunk: int = 64,
    params: Optional[dict[str, nn.Parameter]] = None,
    path: FisherPath = "batched",
) -> tuple[dict[str, torch.Tensor], str]:
    """``sum over the samples at indices of statistic(d objective / d theta)`` for ``module``'s
    trainable parameters (model in eval mode), and how it was computed (``BATCHED`` or ``LOOPED``).
    ``path``: ``auto`` (``choose_path``), ``batched`` or ``looped``; a loss ``vmap`` cannot run is looped,
    and so are sharded parameters (every rank runs the same per-sample backward passes; FSDP
    averages identical gradients, so each rank gets its shard of the statistic). Sums are float32
    whatever the parameters' dtype."""
    params = params if params is not None else {k: p for k, p in module.named_parameters() if p.requires_grad}
    chosen = {"auto": choose_path(params), "batched": BATCHED, "looped": LOOPED}[path]
    if is_sharded(module):  # torch.func does not run through FSDP's sharded parameters
        chosen = LOOPED
    was_training = module.training
    module.eval()
    try:
        if chosen == BATCHED:
            try:
                return _batched(module, params, dataset, indices, objective, statistic, chunk), BATCHED
            except (RuntimeError, NotImplementedError, TypeError, ValueError):
                pass
        return _looped(module, params, dataset, indices, objective, statistic), LOOPED
    finally:
        module.train(was_training)


#: on a CPU, the loop is faster above this many elements per trainable tensor (on average)
LOOP_ABOVE = 32768


def choose_path(params: dict[str, nn.Parameter]) -> str:
    """The faster path for these trainable parameters: on an accelerator the batched one (a
    loop launches every kernel once per sample); on a CPU the loop when the trainable tensors
    hold more than ``LOOP_ABOVE`` elements on average, else the batched one.

    Why the average size: both paths compute the same outer products per sample; the batched one
    also writes each sample's gradient of every tensor (a cost per element), the loop pays a
    Python and dispatch cost per tensor and sample. Measured on one CPU thread, 200 samples
    (CPU seconds, batched / looped): MLP 784-32-32-10, 4.4k elements per tensor, 0.015 / 0.09;
    784-64-64-10, 9.2k, 0.024 / 0.097; 784-128-128-10, 19.7k, 0.08 / 0.11; 784-256-256-10,
    45k, 0.24 / 0.155; 784-512-10, 102k, 0.40 / 0.17; 784-1000-1000-10, 300k, 6.3 / 2.5 (wall);
    eight hidden layers of 64, 4.4k, 0.04 / 0.19; SmallCNN 32-64, 2.4k, 0.15-0.22 / 0.29-0.31.
    """
    values = list(params.values())
    if not values or any(p.device.type != "cpu" for p in values):
        return BATCHED
    return LOOPED if sum(p.numel() for p in values) / len(values) > LOOP_ABOVE else BATCHED


def diagonal_fisher(
    module: LightningModule, dataset: Any, samples: int, chunk: int = 64, path: FisherPath = "auto"
) -> tuple[dict[str, torch.Tensor], str]:
    """Fisher of ``module``'s trainable parameters over the first ``samples`` items of ``dataset``
    (model in eval mode), and how it was computed (``BATCHED`` or ``LOOPED``). ``path``:
    ``auto`` (``choose_path``), ``batched`` or ``looped``; a loss ``vmap`` cannot run is looped."""
    n = min(samples, len(dataset))
    total, how = per_sample_sum(module, dataset, range(n), task_loss_objective, torch.square, chunk, path=path)
    return {k: v / n for k, v in total.items()}, how
