"""Evaluate a model on every task of a sequence, exactly, on one process or many."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from lightning.fabric.utilities import move_data_to_device

from clight.distributed import shards_parameters, world_size
from clight.models.sharding import reshard


@torch.no_grad()
def evaluate_tasks(
    module: Any, datamodule: Any, strategy: Optional[Any] = None, split: str = "test", tasks: Optional[list[int]] = None
) -> dict[str, list[float]]:
    """Accuracy of ``module`` on every task's ``split`` (or only ``tasks``; the others get NaN),
    as ``{count name: [acc per task]}``.

    Every count is divided by ``total``, except a count ``X`` for which the module also returns
    ``X_total``: that is ``X``'s own denominator (a score only some tasks have, NaN on the others).

    Each rank scores its own share of every split (no sample twice, none padded) and the summed
    counts are reduced across ranks, so the result is exact and identical on every rank. A task
    the module cannot score yet (no head) gets NaN. With sharded parameters every rank takes part
    in every forward, so every rank scores every sample (the data module's loaders are unsharded
    then) and nothing is reduced.
    """
    device = strategy.root_device if strategy is not None else module.device
    module.to(device)
    was_training = module.training
    module.eval()
    keys: Optional[list[str]] = None
    rows: list[Optional[torch.Tensor]] = []
    for j in range(datamodule.num_tasks):
        if (tasks is not None and j not in tasks) or not module.can_evaluate(j):
            rows.append(None)
            continue
        sums: dict[str, torch.Tensor] = {}
        for batch in datamodule.evaluation_loader(j, split):
            batch = move_data_to_device(batch, device)
            if strategy is not None:  # floating inputs in the weights' dtype (bf16-true), as the Trainer gives them
                batch = strategy.precision_plugin.convert_input(batch)
            for name, value in module.evaluation_counts(batch).items():
                sums[name] = sums.get(name, 0) + value.detach().double()
        keys = keys or sorted(sums)
        rows.append(torch.stack([torch.as_tensor(sums.get(k, 0.0), dtype=torch.float64, device=device) for k in keys]))
    module.train(was_training)
    reshard(module)
    if keys is None:
        return {"correct": [math.nan] * len(rows)}
    stacked = torch.stack([r if r is not None else torch.zeros(len(keys), dtype=torch.float64, device=device) for r in rows])
    if strategy is not None and getattr(strategy, "world_size", 1) > 1 and not shards_parameters(strategy):
        stacked = strategy.reduce(stacked, reduce_op="sum")
    elif strategy is None and world_size() > 1:  # before the first fit: the process group the runner started
        torch.distributed.all_reduce(stacked)
    stacked = stacked.cpu()
    result = {}
    for i, name in enumerate(keys):
        if name == "total" or name.endswith("_total"):
            continue
        total = stacked[:, keys.index(f"{name}_total" if f"{name}_total" in keys else "total")]
        result[name] = [
            math.nan if rows[j] is None or total[j] == 0 else float(stacked[j, i] / total[j]) for j in range(len(rows))
        ]
    return result
