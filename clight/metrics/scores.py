"""Every score a run records per task after every task, not only accuracy.

A model's ``evaluation_counts`` may return several scores (a language model scored by generation:
``exact_match``, ``rouge_l``, ``label_accuracy``); the runner keeps one matrix per score. This
module summarises each the way ``summarize`` summarises the accuracy matrix (final average over
the tasks seen, BWT, forgetting, FWT against the initial model's row), keeping the matrix itself.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np

from clight.metrics.cl_metrics import summarize

#: matrices summarised elsewhere: the primary accuracy, and the task-aware accuracy of class-incremental runs
PRIMARY = ("correct", "correct_task_aware")


def _rows(matrix: Sequence[Sequence[float]]) -> list[list[Optional[float]]]:
    return [[None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in row] for row in matrix]


def _initial(row: Optional[Sequence[float]]) -> Optional[list[float]]:
    """The initial model's row, if it scores every task after the first (forward transfer needs them)."""
    if row is None or len(row) < 2 or any(v is None or math.isnan(v) for v in row[1:]):
        return None
    return list(row)


def summarize_scores(
    matrices: Mapping[str, Sequence[Sequence[float]]], initial: Optional[Mapping[str, Sequence[float]]] = None
) -> dict:
    """``{score: summary + "matrix"}`` for every score but the primary ones (sequential runs)."""
    out = {}
    for name, matrix in matrices.items():
        if name in PRIMARY:
            continue
        a = np.array(matrix, dtype=float)
        if np.isnan(a[np.tril_indices(a.shape[0], m=a.shape[1])]).any():
            # a score some tasks lack (label accuracy on free-form tasks): its mean over the tasks that have it
            last = a[-1, : a.shape[0]]
            summary = {
                "tasks_finished": int(a.shape[0]),
                "average_accuracy": float(np.nanmean(last)) if np.isfinite(last).any() else None,
            }
        else:
            summary = summarize(a, _initial((initial or {}).get(name)))
        out[name] = {k: v for k, v in summary.items() if not k.endswith("_convention")} | {"matrix": _rows(matrix)}
    return out


def final_scores(matrices: Mapping[str, Sequence[Sequence[float]]]) -> dict:
    """``{score: {"average_accuracy": mean of the last row, "matrix": ...}}`` (joint runs: one row)."""
    return {
        name: {"average_accuracy": float(np.nanmean(np.array(matrix[-1], dtype=float))), "matrix": _rows(matrix)}
        for name, matrix in matrices.items()
        if name not in PRIMARY
    }
