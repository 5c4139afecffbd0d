"""SPU's importance: the magnitude of the summed gradient of a label-free objective.

Over the first ``batches`` batches of the task's training data (rows of the task itself only:
replayed samples and general text are left out), the objective is the squared norm of each
sample's output logits, averaged over the batch; its signed gradients are summed over batches
(gradients zeroed between batches) and the importance is ``|sum|``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable, Collection, Iterable, Optional

import torch
from torch import nn

from clight.models.module import ContinualModule


def task_rows(batch: dict, tasks: Collection[int]) -> Optional[dict]:
    """The rows of ``batch`` from ``tasks`` that are not general samples (``None`` when there are none)."""
    if "task_id" not in batch:
        return batch
    task_id = batch["task_id"]
    n = len(task_id)
    keep = torch.isin(task_id, torch.tensor(sorted(tasks), device=task_id.device))
    if "is_general" in batch:
        keep &= ~batch["is_general"].to(keep.device)
    if bool(keep.all()):
        return batch
    if not bool(keep.any()):
        return None
    return {k: v[keep] if torch.is_tensor(v) and v.dim() > 0 and len(v) == n else v for k, v in batch.items()}


def label_free_objective(logits: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of each sample's logits, averaged over the batch (in float32). Logits a
    model sets to -inf (a class-incremental head's unseen classes) are left out."""
    logits = logits.float()
    return logits.masked_fill(torch.isneginf(logits), 0.0).pow(2).sum(-1).mean()


def summed_gradients(
    module: ContinualModule,
    batches: Iterable[dict],
    weights: dict[str, nn.Parameter],
    tasks: Collection[int],
    to_device: Callable[[Any], Any] = lambda b: b,
    forward_context: Callable[[], AbstractContextManager] = nullcontext,
    lockstep: bool = False,
) -> tuple[dict[str, torch.Tensor], int]:
    """Sum over ``batches`` of the objective's gradient for each of ``weights`` (float32), and
    the number of task rows used. ``forward_context`` makes the context of each forward pass
    (the Trainer's precision plugin: the autocast of training). Runs in eval mode (no dropout noise, no BatchNorm statistic
    updates) and leaves every ``.grad`` empty. ``lockstep`` (sharded parameters: every rank must
    run every forward and backward): a batch without task rows still runs, its objective times 0."""
    sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in weights.items()}
    rows = 0
    was_training = module.training
    module.eval()
    module.zero_grad(set_to_none=True)
    try:
        for batch in batches:
            whole_batch = to_device(batch)
            batch = task_rows(whole_batch, tasks)
            if batch is None and not lockstep:
                continue
            with torch.enable_grad(), forward_context():
                logits = module.output_logits(batch if batch is not None else whole_batch)
                loss = label_free_objective(logits) * (1.0 if batch is not None else 0.0)
            loss.backward()
            rows += len(logits) if batch is not None else 0
            for name, p in weights.items():
                if p.grad is not None:
                    sums[name] += p.grad.float()
            module.zero_grad(set_to_none=True)
    finally:
        module.train(was_training)
        module.zero_grad(set_to_none=True)
    return sums, rows
