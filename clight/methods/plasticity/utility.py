"""Continual backprop's unit utilities (Dohare et al., Nature 2024, and the released code).

All take this step's per-unit batch statistics of the units' output h (mean |h| over the batch
and spatial positions; mean |h - m| for the centred variants, m the bias-corrected running mean
activation) and the chain's weights, and return the step's instantaneous utility; the callback
keeps the running average ``u <- eta*u + (1-eta)*instant``.
"""

from __future__ import annotations

import torch

from clight.methods.plasticity.chain import Chain

UTILITIES = ("contribution", "zero_contribution", "adaptable_contribution")


def instant_utility(kind: str, chain: Chain, stats: dict[str, torch.Tensor]) -> torch.Tensor:
    """``contribution`` (paper): |h| * sum_k |w_out[k,i]|.
    ``zero_contribution``: |h - m| * mean_k |w_out[k,i]|.
    ``adaptable_contribution``: |h - m| * mean_k |w_out[k,i]| / mean_j |w_in[i,j]|."""
    if kind == "contribution":
        return stats["abs"] * chain.outgoing_abs_sum().to(stats["abs"])
    if kind == "zero_contribution":
        return stats["centered"] * chain.outgoing_abs_mean().to(stats["centered"])
    if kind == "adaptable_contribution":
        w_in = chain.incoming_abs_mean().to(stats["centered"])
        return stats["centered"] * chain.outgoing_abs_mean().to(stats["centered"]) / w_in.clamp_min(1e-12)
    raise ValueError(f"utility must be one of {UTILITIES}, got {kind!r}")
