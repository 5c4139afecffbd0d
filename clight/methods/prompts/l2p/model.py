"""L2P: Learning to Prompt for continual learning (Wang et al., CVPR 2022)."""

from __future__ import annotations

from typing import Optional

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from clight.data.task import SequenceInfo
from clight.methods.prompts.model import Pooling, PromptClassifier
from clight.methods.prompts.pool import batch_majority, cosine_similarity, uniform_parameter
from clight.methods.prompts.vit import Prompting
from clight.models.module import default_optimizer


class L2PPool(nn.Module):
    """``pool_size`` prompts of ``length`` tokens, each with a key; a query selects ``top_k``."""

    def __init__(self, pool_size: int, length: int, dim: int, top_k: int, batchwise: bool) -> None:
        super().__init__()
        self.prompts = uniform_parameter(pool_size, length, dim)
        self.keys = uniform_parameter(pool_size, dim)
        self.top_k, self.batchwise = top_k, batchwise

    def select(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(chosen [B, N], similarities [B, pool])``: the N keys nearest each query by cosine
        (most similar first), or the batch's N most frequent choices with ``batchwise``."""
        similarity = cosine_similarity(query, self.keys)
        chosen = similarity.topk(self.top_k, dim=1).indices
        if self.batchwise:
            chosen = batch_majority(chosen, self.top_k)
        return chosen, similarity

    def forward(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [B, N * length, D], matching loss)``: the chosen prompts in order, and the mean
        over the batch of ``sum_i (1 - cos(q, k_si))`` over the chosen keys."""
        chosen, similarity = self.select(query)
        tokens = self.prompts[chosen].flatten(1, 2)
        return tokens, (1 - similarity.gather(1, chosen)).sum(1).mean()


class L2P(PromptClassifier):
    """L2P on a frozen timm ViT: a pool of ``pool_size`` prompts (M) of ``length`` tokens (L_p), each
    with a learnable key; the ``top_k`` (N) keys nearest the query (cosine) pick the prompts, which
    are prepended to the input tokens after the position embedding (prompt tuning). The head reads
    the mean of the prompt tokens' outputs. Loss: cross-entropy + ``match_weight`` (lambda) x the
    cosine distances of the query to the chosen keys. ``batchwise_selection`` uses the batch's most
    frequent choices for every sample (the released code); the paper selects per sample. Defaults:
    M = 10, N = 5, L_p = 5, lambda = 0.5; ``docs/methods/prompts.md`` says where each comes from.
    """

    method_name = "L2P (Wang et al., CVPR 2022)"

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        pool_size: int = 10,
        length: int = 5,
        top_k: int = 5,
        match_weight: float = 0.5,
        batchwise_selection: bool = False,
        pooling: Pooling = "prompt",
        train_mask: bool = True,
    ) -> None:
        if not 1 <= top_k <= pool_size or length < 1:
            raise ValueError(f"L2P needs 1 <= top_k <= pool_size and length >= 1, got {top_k}, {pool_size}, {length}")
        if match_weight < 0:
            raise ValueError(f"L2P.match_weight must be >= 0, got {match_weight}")
        super().__init__(backbone, optimizer, lr_scheduler, pooling, train_mask)
        self.match_weight = match_weight
        self.pool_size, self.length, self.top_k, self.batchwise_selection = pool_size, length, top_k, batchwise_selection

    def build_prompts(self, info: SequenceInfo) -> nn.Module:
        return L2PPool(self.pool_size, self.length, self.embed_dim, self.top_k, self.batchwise_selection)

    def compose(self, query: torch.Tensor, task_id: Optional[torch.Tensor]) -> tuple[Prompting, Optional[torch.Tensor]]:
        tokens, match = self.prompts(query)
        return Prompting(tokens=tokens), self.match_weight * match

    def has_prompt_loss(self) -> bool:
        return self.match_weight > 0

    def describe(self) -> dict:
        return {
            **super().describe(),
            "pool_size": self.pool_size,
            "length": self.length,
            "top_k": self.top_k,
            "match_weight": self.match_weight,
            "placement": "prompt tuning: prepended to the input tokens",
            "selection": "batch majority (released code)" if self.batchwise_selection else "per sample (paper)",
        }
