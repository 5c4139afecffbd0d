"""Continual-learning metrics over an accuracy matrix (see docs/metrics.md).

``a[k][j]`` is the accuracy on task ``j`` after training through task ``k``. Rows may be
partial (a run still in progress): only entries ``j <= k`` are needed by the metrics, except
forward transfer, which also reads ``a[j-1][j]`` (an unseen task) and the initial model's row.
Intransigence also needs a reference model's accuracy per task (``IntransigenceReference``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

FWT_CONVENTION = "GEM convention: FWT = mean_{j>=1} (a[j-1][j] - b_j), b_j = accuracy of the untrained initial model on task j"
#: why FWT reads 0.00 in class-incremental runs of classifiers that mask unseen classes
FWT_CLASS_INCREMENTAL = (
    "0.00 by construction in class-incremental runs of a classifier that masks the classes not yet seen "
    "(ContinualClassifier): no task's classes can be predicted before it is trained, by the initial model either"
)
FORGETTING_CONVENTION = (
    "FM_k = mean_{j<k} max_{j<=i<k} (a[i][j] - a[k][j]): the best accuracy task j had after it was "
    "trained (rows i < j, before task j was trained, are not used)"
)
# how the reference accuracies a*_k of intransigence were obtained
REFERENCE_KINDS = {
    "joint": "a*_k = accuracy on task k of a model trained jointly on tasks 0..k",
    "single_task": "a*_k = accuracy on task k of a model trained on task k alone",
}


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
    """``FM_k = mean_{j<k} max_{j<=i<k} (a[i][j] - a[k][j])``; ``None`` after the first task.

    The maximum runs over the rows from ``j`` on: the best accuracy task ``j`` had *after it was
    trained*. Rows before ``j`` hold accuracy on a task not trained yet, which in
    domain-incremental runs can exceed the later accuracy and would inflate the figure.
    """
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


@dataclass(frozen=True)
class IntransigenceReference:
    """A reference model's accuracy ``a*_k`` on every task ``k``, and how it was obtained.

    ``kind``: ``"joint"`` (for each ``k``, a model trained jointly on tasks ``0..k``, Chaudhry et
    al. 2018) or ``"single_task"`` (a model trained on task ``k`` alone, when no joint runs exist).
    ``source``: where the figures come from (run folders, a table), written out with them.
    """

    accuracy: Sequence[float]
    kind: str
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in REFERENCE_KINDS:
            raise ValueError(f"IntransigenceReference.kind must be one of {sorted(REFERENCE_KINDS)}, got {self.kind!r}")
        accuracy = np.asarray(self.accuracy, dtype=float)
        if accuracy.ndim != 1 or accuracy.size == 0:
            raise ValueError(f"IntransigenceReference.accuracy must be one accuracy per task, got shape {accuracy.shape}")
        object.__setattr__(self, "accuracy", tuple(float(x) for x in accuracy))

    def describe(self) -> str:
        return REFERENCE_KINDS[self.kind] + (f"; source: {self.source}" if self.source else "")


def intransigence(acc, reference: IntransigenceReference, k: Optional[int] = None) -> tuple[float, list[float]]:
    """Intransigence (Chaudhry et al. 2018) ``I_j = a*_j - a[j][j]`` for every task ``j <= k``:
    how much less the run learned task ``j`` than the reference did. Returns the mean over those
    tasks and the per-task values."""
    if not isinstance(reference, IntransigenceReference):
        raise TypeError(
            "intransigence needs an IntransigenceReference(accuracy, kind, source), so the output can say how the "
            f"reference was obtained; got {type(reference).__name__}"
        )
    a = _as_matrix(acc)
    k = a.shape[0] - 1 if k is None else k
    if len(reference.accuracy) < k + 1:
        raise ValueError(f"need reference accuracies for {k + 1} tasks, got {len(reference.accuracy)}")
    per_task = [reference.accuracy[j] - float(a[j, j]) for j in range(k + 1)]
    return float(np.mean(per_task)), per_task


def summarize(acc, initial: Optional[Sequence[float]] = None, reference: Optional[IntransigenceReference] = None) -> dict:
    """All metrics after the last finished row, as a JSON-ready dict. Intransigence is included
    only when a ``reference`` is given."""
    a = _as_matrix(acc)
    summary: dict[str, Any] = {
        "tasks_finished": int(a.shape[0]),
        "average_accuracy": average_accuracy(a),
        "average_incremental_accuracy": average_incremental_accuracy(a),
        "backward_transfer": backward_transfer(a),
        "forgetting": forgetting(a),
        "forgetting_convention": FORGETTING_CONVENTION,
        "forward_transfer": None,
        "forward_transfer_convention": FWT_CONVENTION,
    }
    if initial is not None:
        summary["forward_transfer"] = forward_transfer(a, initial)
    if reference is not None:
        mean, per_task = intransigence(a, reference)
        summary["intransigence"] = mean
        summary["intransigence_per_task"] = per_task
        summary["intransigence_reference"] = reference.describe()
    return summary
