"""Plasticity statistics (docs/methods/plasticity.md, docs/metrics.md) of a representation or a network.

A representation ``h`` is ``[N, units]`` (or ``[N, C, H, W]``: a unit is a channel, an entry is
one sample at one position).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def _entries(h: torch.Tensor) -> torch.Tensor:
    """``[entries, units]``: samples (times positions for conv maps) by units."""
    if h.dim() == 4:
        return h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
    return h.reshape(-1, h.shape[-1])


def dead_fraction(h: torch.Tensor) -> float:
    """Fraction of units whose activation is exactly 0 on every entry."""
    e = _entries(h)
    return float((e == 0).all(dim=0).float().mean())


def dormant_fraction(h: torch.Tensor, active_share: float = 0.01) -> float:
    """Fraction of units active (non-zero) on fewer than ``active_share`` of the entries."""
    e = _entries(h)
    return float(((e != 0).float().mean(dim=0) < active_share).float().mean())


def redo_dormant_fraction(h: torch.Tensor, tau: float = 0.025) -> float:
    """Fraction of units with ReDo score ``E|h_i| / mean_k E|h_k| <= tau``."""
    a = _entries(h).abs().mean(dim=0)
    return float((a / a.mean().clamp_min(1e-12) <= tau).float().mean())


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values (descending, float64) of a representation ``[N, units]`` (conv maps: averaged
    over positions); ``effective_rank`` and ``stable_rank`` take them as ``spectrum``, so that one SVD
    serves both (half the monitor's time on a small MLP)."""
    m = matrix.mean(dim=(2, 3)) if matrix.dim() == 4 else matrix.reshape(matrix.shape[0], -1)
    return torch.linalg.svdvals(m.double())


def effective_rank(matrix: torch.Tensor, spectrum: Optional[torch.Tensor] = None) -> float:
    """``exp(-sum_k p_k log p_k)``, ``p_k = sigma_k / sum sigma`` (conv maps: averaged over positions);
    ``spectrum``: the matrix's ``singular_values``, when already computed."""
    s = singular_values(matrix) if spectrum is None else spectrum
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def stable_rank(matrix: torch.Tensor, delta: float = 0.01, spectrum: Optional[torch.Tensor] = None) -> int:
    """``srank_delta = min{k : sum_{i<=k} sigma_i / sum_i sigma_i >= 1 - delta}`` (Kumar et al. 2021,
    used by Lyle et al. for plasticity): how many singular directions hold all but ``delta`` of
    the spectrum (conv maps: averaged over positions; 0 for an all-zero matrix)."""
    if not 0 <= delta < 1:
        raise ValueError(f"stable_rank needs 0 <= delta < 1, got {delta}")
    s = singular_values(matrix) if spectrum is None else spectrum
    total = s.sum()
    if total <= 0:
        return 0
    share = s.cumsum(0) / total
    return int((share < 1 - delta).sum()) + 1


def weight_magnitude(model: nn.Module) -> float:
    """Mean |theta| over all weight tensors (parameters with two or more dimensions)."""
    total, count = 0.0, 0
    for p in model.parameters():
        if p.dim() >= 2:
            total += float(p.detach().abs().sum())
            count += p.numel()
    return total / max(count, 1)
