"""Per-dimension thresholds and per-entry states of the base model over the general set.

Two passes over the general samples with the base model, in evaluation mode and without
gradients: the first accumulates, per hidden dimension, the sum and the sum of squares of the
last hidden states of every real (unpadded) token in float64; the second classifies every entry
against ``neg = mu - sd`` and ``pos = mu + sd`` and packs the states at 2 bits each. No float
hidden states of the whole set are ever held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch

from clight.methods.general_replay.packed_states import PackedStates, classify, pack

HiddenFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Thresholds:
    mu: torch.Tensor
    sd: torch.Tensor

    @property
    def pos(self) -> torch.Tensor:
        return self.mu + self.sd

    @property
    def neg(self) -> torch.Tensor:
        return self.mu - self.sd

    @classmethod
    def from_hidden(cls, hidden: torch.Tensor) -> "Thresholds":
        """From ``[tokens, d]`` states at once (the direct definition; used by tests)."""
        h = hidden.double()
        return cls(h.mean(0).float(), h.std(0).float())


def masked_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, L, d]`` -> ``[real tokens, d]`` in sample-major order (padding dropped)."""
    return hidden[attention_mask.bool()]


@torch.no_grad()
def compute_thresholds(
    hidden_fn: HiddenFn, batches: Callable[[], Iterable[dict]], device: torch.device, unbiased: bool = True
) -> Thresholds:
    """mu_d and sd_d over all real general tokens: the unbiased sd (``torch.std``, the paper's
    sample statistic) or, with ``unbiased=False``, the population sd (the released code's ``np.std``)."""
    total = sq = None
    n = 0
    for batch in batches():
        h = masked_tokens(
            hidden_fn(batch["input_ids"].to(device), batch["attention_mask"].to(device)), batch["attention_mask"].to(device)
        ).double()
        total = h.sum(0) if total is None else total + h.sum(0)
        sq = (h * h).sum(0) if sq is None else sq + (h * h).sum(0)
        n += h.shape[0]
    if n < 2:
        raise ValueError("the general set has fewer than two tokens: thresholds need more text")
    assert total is not None and sq is not None
    mu = total / n
    var = ((sq - n * mu * mu) / (n - 1 if unbiased else n)).clamp_min(0.0)
    return Thresholds(mu.float().cpu(), var.sqrt().float().cpu())


@torch.no_grad()
def compute_states(
    hidden_fn: HiddenFn,
    batches: Callable[[], Iterable[dict]],
    thresholds: Thresholds,
    device: torch.device,
    features: Optional[list] = None,
) -> PackedStates:
    """Packed NEG/POS/NEU states of every real general token; ``features`` (a list) also collects
    the float16 hidden states when the feature-imitation cache wants them."""
    neg, pos = thresholds.neg.to(device), thresholds.pos.to(device)
    packed, lengths = [], []
    for batch in batches():
        mask = batch["attention_mask"].to(device)
        h = masked_tokens(hidden_fn(batch["input_ids"].to(device), mask), mask).float()
        packed.append(pack(classify(h, neg, pos)).cpu())
        lengths.append(mask.sum(1).cpu())
        if features is not None:
            features.append(h.half().cpu())
    lengths_t = torch.cat(lengths)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths_t.long().cumsum(0)])
    return PackedStates(torch.cat(packed), offsets, neg.numel())
