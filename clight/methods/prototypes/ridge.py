"""RanPAC's ridge classifier from accumulated statistics, and the choice of its ridge parameter.

With projected features ``H`` and one-hot targets ``Y`` of every sample seen so far, ``G = H^T H``
and ``Q = H^T Y`` suffice: ``W = (G + lambda I)^{-1} Q``. The ridge parameter is chosen per task by
validation: fit on the task's fitting rows, score the mean squared error on its validation rows,
and keep the ``lambda`` of the grid with the least error. One eigendecomposition of the fitting
Gram matrix serves the whole grid, and the validation error needs only the validation rows' own
``G`` and ``Q``, so every quantity is a sum over samples (exact under DDP after one all-reduce).
"""

from __future__ import annotations

from typing import Sequence

import torch

PAPER_GRID = tuple(10.0**k for k in range(-8, 9))  # 1e-8 ... 1e8, the released code's grid


def ridge_solution(gram: torch.Tensor, class_features: torch.Tensor, ridge: float) -> torch.Tensor:
    """``(G + ridge I)^{-1} Q``, ``[M, C]``."""
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + ridge * eye, class_features)


def validation_errors(
    fit_gram: torch.Tensor,
    fit_class_features: torch.Tensor,
    val_gram: torch.Tensor,
    val_class_features: torch.Tensor,
    val_samples: int,
    grid: Sequence[float],
) -> list[float]:
    """Mean squared error on the validation rows (over rows and classes, as ``F.mse_loss``) of the
    ridge fit on the fitting rows, for every ``lambda`` of ``grid``.

    ``||H_v W - Y_v||^2 = tr(W^T G_v W) - 2 tr(W^T Q_v) + n_v`` for one-hot ``Y_v``; with
    ``G_f = V diag(e) V^T``, ``W = V diag(1 / (e + lambda)) V^T Q_f``."""
    eigenvalues, vectors = torch.linalg.eigh(fit_gram)
    eigenvalues = eigenvalues.clamp_min(0)
    projected_fit = vectors.T @ fit_class_features
    projected_val_gram = vectors.T @ val_gram @ vectors
    projected_val = vectors.T @ val_class_features
    num_classes = fit_class_features.shape[1]
    errors = []
    for ridge in grid:
        weights = projected_fit / (eigenvalues + ridge)[:, None]
        squared = (weights * (projected_val_gram @ weights)).sum() - 2 * (weights * projected_val).sum() + val_samples
        errors.append(float(squared) / (val_samples * num_classes))
    return errors


def validation_rows(count: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """A boolean mask of the ``count`` training rows of a task held out to choose the ridge parameter:
    ``count - int((1 - fraction) * count)`` rows drawn without replacement (the released code keeps
    the first 80% of a shuffled pass for fitting and the rest for validation)."""
    held_out = count - int((1 - fraction) * count)
    mask = torch.zeros(count, dtype=torch.bool)
    mask[torch.randperm(count, generator=generator)[:held_out]] = True
    return mask
