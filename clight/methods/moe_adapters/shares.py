"""Where DDAS sends each task's test samples, measured after every task: the share of task j's
test samples routed to each task's experts and to the pretrained model.

The frozen model's features of a data set do not change during a run (MoE adapters never train
the pretrained model), so each task's test features are computed once, with one forward per batch
with every adapter off, and routed again after every task with the DDAS selector as it then is.
The routes are those evaluation takes: the same features (for causal LMs, a question's prompt).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from lightning.fabric.utilities import move_data_to_device

from clight.distributed import is_rank_zero


@torch.no_grad()
def frozen_features_of(
    module: Any, dataset: Any, target: Any, routing: Any, collate_fn: Callable, batch_size: int, desc: str
) -> torch.Tensor:
    """The frozen model's DDAS features ``[N, d]`` of every sample of ``dataset``, in order."""
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    network = target.network(module)
    was_training = module.training
    module.eval()
    features = []
    try:
        for batch in tqdm(loader, desc=desc, leave=False, disable=not is_rank_zero()):
            args, kwargs, context = target.batch_call(module, move_data_to_device(batch, module.device))
            with context:
                features.append(routing.frozen_features(network, args, kwargs).cpu())
    finally:
        module.train(was_training)
    return torch.cat(features)


def route_shares(routes: torch.Tensor, num_tasks: int) -> list[float]:
    """``[share to task 0, ..., share to task T-1, share to the pretrained model]`` of ``routes``
    (``[N]``, -1 = the pretrained model); they add up to 1."""
    slots = torch.where(routes < 0, torch.full_like(routes, num_tasks), routes)
    counts = torch.bincount(slots.cpu(), minlength=num_tasks + 1)
    return [float(c) / max(1, len(routes)) for c in counts.tolist()]


class RoutingShares:
    """The routing shares of every task's test samples after every task (``after_task``)."""

    def __init__(self) -> None:
        self.after_task: list[list[list[float]]] = []
        self._features: dict[int, torch.Tensor] = {}

    def measure(self, selector: Any, tasks: list, features_of: Callable[[Any], torch.Tensor]) -> list[list[float]]:
        """One row per task: where ``selector`` sends that task's test samples (``features_of(task)``, cached)."""
        rows = []
        for task in tasks:
            if task.index not in self._features:
                self._features[task.index] = features_of(task)
            features = self._features[task.index].to(selector.thresholds.device)
            rows.append(route_shares(selector.route(features), len(tasks)))
        return rows

    def describe(self, num_tasks: int) -> dict:
        return {
            "what": "share of each task's test samples DDAS sends to each task's experts and to the pretrained model, "
            "after each task (rows: the test set's task; columns: where its samples go)",
            "columns": [f"task {t + 1}" for t in range(num_tasks)] + ["pretrained model"],
            "after_task": self.after_task,
        }
