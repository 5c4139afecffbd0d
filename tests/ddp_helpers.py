"""Helpers the DDP scripts in tests/scripts share."""

import torch

from clight.data.views import collate_dict_batch


def rank_inverted(items):
    """Collate a batch; rank 1 sees its images inverted (1 - x), so the ranks' contributions differ
    and a result can only match a hand computation over both ranks' rows if they are reduced."""
    batch = collate_dict_batch(items)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() == 1:
        batch["input"] = 1.0 - batch["input"]
    return batch
