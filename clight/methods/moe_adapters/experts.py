"""The experts (bottleneck adapters) and the per-task top-k gate of MoE adapters.

An expert is the released code's ``Adapter`` with ``init_option="lora"``: ``down`` (d -> r,
Kaiming-uniform weights, zero bias), ReLU, dropout, ``up`` (r -> d, zero weights and bias),
output times ``scale``. Its output is exactly 0 until ``up`` is trained.

The gate is the noisy top-k gating of Shazeer et al. (2017) that the released code uses: clean
logits ``x @ W_t``; while training, plus Gaussian noise with a learned scale
``softplus(x @ W_noise_t) + 0.01``; the k largest logits go through a softmax, every other expert
gets weight 0. The load-balancing loss is ``cv^2(importance) + cv^2(load)``, with the smooth
load estimate when the gate is noisy.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

NOISE_EPSILON = 1e-2


def init_linear_(linear: nn.Linear, generator: torch.Generator, zero_bias: bool = False) -> None:
    """``nn.Linear``'s own initialisation, drawn from ``generator`` (the same on every rank)."""
    with torch.no_grad():
        nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
        if linear.bias is not None:
            if zero_bias:
                linear.bias.zero_()
            else:
                bound = 1 / math.sqrt(linear.in_features) if linear.in_features > 0 else 0.0
                linear.bias.uniform_(-bound, bound, generator=generator)


class BottleneckAdapter(nn.Module):
    """``scale * up(dropout(relu(down(x))))``; ``up`` starts at zero, so the output does too."""

    def __init__(
        self,
        dim: int,
        bottleneck: int = 64,
        scale: float = 0.1,
        dropout: float = 0.1,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.scale, self.dropout = scale, dropout
        init_linear_(self.down, generator if generator is not None else torch.default_generator, zero_bias=True)
        with torch.no_grad():
            self.up.weight.zero_()
            self.up.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.dropout(F.relu(self.down(x)), p=self.dropout, training=self.training)
        return self.up(hidden) * self.scale


def cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation (0 for a single value), as in the released code."""
    if x.numel() <= 1:
        return x.new_zeros(())
    x = x.float()
    return x.var() / (x.mean() ** 2 + 1e-10)


def _prob_in_top_k(
    clean: torch.Tensor, noisy: torch.Tensor, noise_std: torch.Tensor, top_values: torch.Tensor, k: int
) -> torch.Tensor:
    """P(expert in the top k) under fresh noise: the smooth load estimate of Shazeer et al."""
    threshold_in = top_values[:, k : k + 1]
    threshold_out = top_values[:, k - 1 : k]
    is_in = noisy > threshold_in
    prob_in = torch.special.ndtr((clean - threshold_in) / noise_std)
    prob_out = torch.special.ndtr((clean - threshold_out) / noise_std)
    return torch.where(is_in, prob_in, prob_out)


def top_k_gates(
    x: torch.Tensor, weight: torch.Tensor, noise_weight: Optional[torch.Tensor], k: int, noisy: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate values ``[N, E]`` (k nonzero per row, summing to 1) and the balance loss of these rows."""
    clean = x @ weight.to(x.dtype)
    experts = clean.shape[1]
    if noisy and noise_weight is not None:
        noise_std = F.softplus(x @ noise_weight.to(x.dtype)) + NOISE_EPSILON
        logits = clean + torch.randn_like(clean) * noise_std
    else:
        logits = clean
    top_values, top_index = logits.topk(min(k + 1, experts), dim=1)
    gates = torch.zeros_like(logits).scatter(1, top_index[:, :k], torch.softmax(top_values[:, :k], dim=1))
    if noisy and noise_weight is not None and k < experts:
        load = _prob_in_top_k(clean, logits, noise_std, top_values, k).sum(0)
    else:
        load = (gates > 0).sum(0).to(gates.dtype)
    return gates, cv_squared(gates.sum(0)) + cv_squared(load)
