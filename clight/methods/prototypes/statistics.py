"""One pass over a task's training split through the frozen model, and sums reduced across ranks.

Each rank reads its own share of the split (``TaskSequence.evaluation_loader``: every W-th sample,
in order, without augmentation), so W processes see each sample once, and the statistics they sum
are identical on every rank after one all-reduce.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from lightning.fabric.utilities import move_data_to_device

from clight.data.task import Task
from clight.distributed import is_rank_zero


@torch.no_grad()
def training_features(module: Any, datamodule: Any, task: Task) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(rows, features, targets)`` batch by batch: the rows' positions in the task's training
    split, the model's features (``module.features``) in float64, and the class ids."""
    from tqdm.auto import tqdm

    loader = datamodule.evaluation_loader(task.index, "train")
    was_training = module.training
    module.eval()
    try:
        batches = tqdm(
            zip(loader.batch_sampler, loader),
            total=len(loader),
            desc=f"features, task {task.index}",
            leave=False,
            disable=None if is_rank_zero() else True,  # None: shown on a terminal only
        )
        for rows, batch in batches:
            batch = move_data_to_device(batch, module.device)
            features = module.features(module.model_input(batch)).double()
            yield torch.as_tensor(rows, device=features.device), features, batch["target"]
    finally:
        module.train(was_training)


def sum_across_ranks(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """``tensors`` summed element-wise over every rank, in place (themselves on one process). Each
    is reduced on its own: a Gram matrix of RanPAC's width is too large to copy into one buffer."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        for tensor in tensors:
            torch.distributed.all_reduce(tensor)
    return list(tensors)
