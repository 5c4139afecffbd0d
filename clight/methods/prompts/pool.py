"""Pieces the prompt methods share: uniform initialisation, cosine matching of queries to keys."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def uniform_parameter(*shape: int) -> nn.Parameter:
    """Entries uniform in [-1, 1] (the released L2P / DualPrompt code's ``uniform`` initialiser),
    from the global generator, which the runner seeds alike on every rank."""
    return nn.Parameter(torch.rand(*shape) * 2 - 1)


def cosine_similarity(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` cosine similarities of every query ``[B, D]`` to every key ``[K, D]``."""
    return F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).T


def batch_majority(choices: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` most frequent entries of ``choices`` ``[B, k]`` (ties to the lower index), for
    every row: the released L2P / DualPrompt code's ``batchwise_prompt``."""
    ids, counts = torch.unique(choices, return_counts=True)
    order = sorted(range(len(ids)), key=lambda i: (-int(counts[i]), int(ids[i])))[:count]
    chosen = ids[torch.tensor(order, device=ids.device)]
    if len(chosen) < count:  # fewer distinct ids than needed: the code pads with the smallest id
        chosen = torch.cat([chosen, chosen.min().repeat(count - len(chosen))])
    return chosen.expand(len(choices), -1)
