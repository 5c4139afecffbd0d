"""iCaRL's exemplar selection by herding, and its nearest-mean-of-exemplars scores."""

from __future__ import annotations

from typing import Literal

import torch
from torch.nn import functional as F

Herding = Literal["paper", "released_code"]


def herding_order(features: torch.Tensor, m: int) -> list[int]:
    """The paper's herding (Rebuffi et al., CVPR 2017, Algorithm 4) over L2-normalised ``features``
    ``[n, d]``: ``p_k = argmin_x || mu - (phi(x) + sum_{j<k} phi(p_j)) / k ||``, ``mu`` the mean
    feature, each sample chosen at most once (the lowest index among equals); up to ``m`` rows in
    the order chosen. Of the squared distance only the part that depends on x is computed,
    ``(2 S . phi(x) + ||phi(x)||^2) / k^2 - 2 mu . phi(x) / k`` (S the sum of the chosen features),
    so that a step costs one matrix-vector product."""
    phi = features.double()
    mu_dot = phi @ phi.mean(0)
    norms = phi.pow(2).sum(1)
    sum_dot = torch.zeros_like(mu_dot)
    available = torch.ones(len(phi), dtype=torch.bool, device=phi.device)
    chosen: list[int] = []
    for k in range(1, min(m, len(phi)) + 1):
        distance = (2 * sum_dot + norms) / k**2 - 2 * mu_dot / k
        i = int(distance.masked_fill(~available, float("inf")).argmin())
        chosen.append(i)
        available[i] = False
        sum_dot += phi @ phi[i]
    return chosen


def released_code_herding_order(features: torch.Tensor, m: int, iterations: int = 1000) -> list[int]:
    """The herding of the authors' released code (as Avalanche ports it): ``w <- mu``; repeatedly
    take ``argmax_x w . phi(x)``, keep it if new, and set ``w <- w + mu - phi(x)``; at most
    ``iterations`` steps, so fewer than ``m`` rows may come back."""
    phi = features.double()
    mu = phi.mean(0)
    w = mu.clone()
    chosen: list[int] = []
    for _ in range(iterations):
        if len(chosen) == min(m, len(phi)):
            break
        i = int((phi @ w).argmax())
        if i not in chosen:
            chosen.append(i)
        w += mu - phi[i]
    return chosen


HERDING = {"paper": herding_order, "released_code": released_code_herding_order}


def normalized(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features, dim=-1)


def nearest_mean_scores(features: torch.Tensor, means: torch.Tensor, has_mean: torch.Tensor) -> torch.Tensor:
    """``-|| phi(x) - mu_y ||^2`` for every class y with a mean (``-inf`` for the others), ``phi``
    the L2-normalised features: the class with the highest score is the nearest mean."""
    phi = normalized(features)
    scores = -(phi.unsqueeze(1) - means.to(phi.dtype).unsqueeze(0)).pow(2).sum(-1)
    return scores.masked_fill(~has_mean, float("-inf"))
