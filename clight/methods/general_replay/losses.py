"""Losses on replayed general samples: threshold margin (GeRe) and the alternatives it is compared with.

All functions take the entries of *valid* general tokens only (padding already removed), as
``[n_tokens, d]`` hidden states or ``[n_tokens, vocab]`` logits, so masking happens once, where
the tokens are gathered.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clight.methods.general_replay.packed_states import NEG, NEU, POS

EPS = 1e-8


def tm_loss_from_masks(
    hidden: torch.Tensor,
    neg_mask: torch.Tensor,
    pos_mask: torch.Tensor,
    neu_mask: torch.Tensor,
    neg: torch.Tensor,
    pos: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Threshold-margin loss (docs/methods/gere.md) with float state masks, averaged over violating entries.

    ``hidden`` ``[..., d]``; the state masks have its shape; ``neg``/``pos`` ``[d]``; ``mask``
    (optional, e.g. the attention mask ``[...]``) zeroes whole tokens.
    """
    h = hidden.float()
    penalty = neg_mask * F.relu(h - neg) + pos_mask * F.relu(pos - h) + neu_mask * (F.relu(h - pos) + F.relu(neg - h))
    if mask is not None:
        penalty = penalty * mask.unsqueeze(-1).to(penalty.dtype)
    return penalty.sum() / ((penalty != 0).sum() + EPS)


def state_masks(codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 state codes -> float (NEG, POS, NEU) masks, as the released code stores them."""
    return (codes == NEG).to(dtype), (codes == POS).to(dtype), (codes == NEU).to(dtype)


def tm_loss(hidden: torch.Tensor, codes: torch.Tensor, neg: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Threshold-margin loss from 2-bit state codes (unpacked) for ``[n, d]`` valid-token hidden states."""
    return tm_loss_from_masks(hidden, *state_masks(codes), neg, pos)


def logit_kl(logits: torch.Tensor, base_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(base || current) between next-token distributions, averaged over tokens."""
    log_p = F.log_softmax(logits.float() / temperature, dim=-1)
    log_q = F.log_softmax(base_logits.float() / temperature, dim=-1)
    return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")


def feature_l1(hidden: torch.Tensor, base_hidden: torch.Tensor) -> torch.Tensor:
    return (hidden.float() - base_hidden.float()).abs().mean()


def feature_l2(hidden: torch.Tensor, base_hidden: torch.Tensor) -> torch.Tensor:
    return (hidden.float() - base_hidden.float()).pow(2).mean()


FEATURE_LOSSES = {"feature_l1": feature_l1, "feature_l2": feature_l2}
