"""Continual-learning metrics over an accuracy matrix (METHODS.md section 7).

``a[k][j]`` is the accuracy on task ``j`` after training through task ``k``. Rows may be
partial (a run still in progress): only entries ``j <= k`` are needed by the metrics, except
forward transfer, which also reads ``a[j-1][j]`` (an unseen task) and the initial model's row.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

FWT_CONVENTION = (
    "GEM convention: FWT = mean_{j>=1} (a[j-1][j] - b_j), b_j = accuracy of the untrained "
    "initial model on task j"
)


def _as_matrix(acc: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    matrix = np.asarray(acc, dtype=float)
    if matrix.ndim != 2:
        raise ValueError(f"accuracy matrix must be 2-D, got shape {matrix.shape}")
    if matrix.shape[0] > matrix.shape[1]:
        raise ValueError(f"accuracy matrix has more rows than tasks: {matrix.shape}")
    return matrix


def average_accuracy(acc, k: Optional[int] = None) -> float:
    """``AA_k = mean_{j<=k} a[k][j]`` (``k`` defaults to the last row)."""
    a = _as_matrix(acc)
    k = a.shape[0] - 1 if k is None else k
    return float(a[k, : k + 1].mean())


def average_incremental_accuracy(acc, k: Optional[int] = None) -> float:
    """``AIA_k = mean_{i<=k} AA_i``."""
    a = _as_matrix(acc)
    k = a.shape[0] - 1 if k is None else k
    return float(np.mean([average_accuracy(a, i) for i in range(k + 1)]))


def backward_transfer(acc, k: Optional[int] = None) -> Optional[float]:
    """``BWT_k = mean_{j<k} (a[k][j] - a[j][j])``; ``None`` after the first task."""
    a = _as_matrix(acc)
    k = a.shape[0] - 1 if k is None else k
    if k < 1:
        return None
    return float(np.mean([a[k, j] - a[j, j] for j in range(k)]))


def forgetting(acc, k: Optional[int] = None) -> Optional[float]:
    """``FM_k = mean_{j<k} max_{i<k} (a[i][j] - a[k][j])``; ``None`` after the first task."""
    a = _as_matrix(acc)
    k = a.shape[0] - 1 if k is None else k
    if k < 1:
        return None
    return float(np.mean([max(a[i, j] - a[k, j] for i in range(j, k)) for j in range(k)]))


def forward_transfer(acc, initial: Sequence[float], k: Optional[int] = None) -> Optional[float]:
    """GEM forward transfer ``mean_{1<=j<=k} (a[j-1][j] - b_j)``; see ``FWT_CONVENTION``."""
    a = _as_matrix(acc)
    b = np.asarray(initial, dtype=float)
    k = a.shape[0] - 1 if k is None else k
    if k < 1:
        return None
    if b.shape[0] < k + 1:
        raise ValueError(f"need initial accuracies for {k + 1} tasks, got {b.shape[0]}")
    return float(np.mean([a[j - 1, j] - b[j] for j in range(1, k + 1)]))


def summarize(acc, initial: Optional[Sequence[float]] = None) -> dict:
    """All metrics after the last finished row, as a JSON-ready dict."""
    a = _as_matrix(acc)
    summary = {
        "tasks_finished": int(a.shape[0]),
        "average_accuracy": average_accuracy(a),
        "average_incremental_accuracy": average_incremental_accuracy(a),
        "backward_transfer": backward_transfer(a),
        "forgetting": forgetting(a),
        "forward_transfer": None,
        "forward_transfer_convention": FWT_CONVENTION,
    }
    if initial is not None:
        summary["forward_transfer"] = forward_transfer(a, initial)
    return summary
