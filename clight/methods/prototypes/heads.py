"""The classifier heads of the gradient-free methods: written from class statistics, never trained.

Each replaces a ``ContinualClassifier``'s single head (``heads["all"]``) and keeps what it predicts
with as buffers, so the model's own checkpoint restores its predictions exactly.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F


class CosinePrototypeHead(nn.Module):
    """SimpleCIL's classifier: ``logit_c = cos(f, p_c)`` with ``p_c`` the mean feature of class c
    (a class without a prototype yet scores 0; the model masks unseen classes anyway)."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.in_features, self.out_features = num_features, num_classes
        self.register_buffer("prototypes", torch.zeros(num_classes, num_features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(features, dim=-1), F.normalize(self.prototypes, dim=-1))


class RandomProjectionHead(nn.Module):
    """RanPAC's classifier: ``logits = relu(f W_rand) W_o^T``.

    ``W_rand`` (``[L, M]``, entries N(0, 1)) is drawn once from ``generator`` and frozen; ``W_o``
    (``weight``, ``[C, M]``) is the ridge solution the method writes after every task.
    ``projection_dim = 0`` skips the projection (``h = f``: the paper's "no RP" ablation).
    """

    def __init__(self, num_features: int, num_classes: int, projection_dim: int, generator: torch.Generator) -> None:
        super().__init__()
        self.in_features, self.out_features = num_features, num_classes
        self.projection_dim = projection_dim
        width = projection_dim if projection_dim > 0 else num_features
        projection = torch.randn(num_features, projection_dim, generator=generator) if projection_dim > 0 else torch.zeros(0)
        self.register_buffer("projection", projection)
        self.register_buffer("weight", torch.zeros(num_classes, width))

    @property
    def width(self) -> int:
        """M: the width of the projected features (L without a projection)."""
        return self.weight.shape[1]

    def project(self, features: torch.Tensor) -> torch.Tensor:
        if self.projection_dim == 0:
            return features
        return F.relu(features @ self.projection.to(features.dtype))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(self.project(features), self.weight)


class CosineHead(nn.Module):
    """The trainable head of first-session adaptation: ``sigma * cos(f, w_c)`` with a learnable
    scale ``sigma`` (initially 1), as the released APER and RanPAC code trains it."""

    def __init__(self, num_features: int, num_classes: int, generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.in_features, self.out_features = num_features, num_classes
        bound = 1.0 / math.sqrt(num_features)
        weight = torch.rand(num_classes, num_features, generator=generator) * 2 * bound - bound
        self.weight = nn.Parameter(weight)
        self.sigma = nn.Parameter(torch.ones(1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.sigma * F.linear(F.normalize(features, dim=-1), F.normalize(self.weight, dim=-1))


class AdaptingHead(nn.Module):
    """``classifier`` (statistics) outside the first-session adaptation, ``adaptation`` (a trained
    cosine head) while the backbone adapts; ``adapting`` is set by the method between fits."""

    def __init__(self, classifier: nn.Module, adaptation: nn.Module) -> None:
        super().__init__()
        self.classifier, self.adaptation = classifier, adaptation
        self.in_features, self.out_features = classifier.in_features, classifier.out_features
        self.adapting = False

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.adaptation(features) if self.adapting else self.classifier(features)
