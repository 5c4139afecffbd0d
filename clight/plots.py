"""The figures of a run folder: the accuracy matrix, each task's curve, new-task accuracy."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    """Write ``fig`` to ``path`` atomically (a kill leaves the old figure or none, never half of one) and close it."""
    from clight.io import atomic_output

    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png")
    finally:
        _pyplot().close(fig)


def plot_matrix(matrix: np.ndarray, path: Path, row_labels: Optional[list[str]] = None) -> None:
    plt = _pyplot()
    rows, cols = matrix.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * cols, 1.2 + 0.6 * rows))
    image = ax.imshow(100 * matrix, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    for k in range(rows):
        for j in range(cols):
            if not math.isnan(matrix[k, j]):
                ax.text(
                    j,
                    k,
                    f"{100 * matrix[k, j]:.0f}",
                    ha="center",
                    va="center",
                    color="white" if matrix[k, j] < 0.6 else "black",
                    fontsize=8,
                )
    ax.set_xticks(range(cols), [str(j + 1) for j in range(cols)])
    ax.set_yticks(range(rows), row_labels or [str(k + 1) for k in range(rows)])
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after training task")
    ax.set_title("accuracy (%)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, path)


def plot_task_curves(matrix: np.ndarray, path: Path) -> None:
    plt = _pyplot()
    rows, cols = matrix.shape
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = np.arange(1, rows + 1)
    for j in range(min(rows, cols)):
        ax.plot(steps[j:], 100 * matrix[j:, j], marker="o", label=f"task {j + 1}")
    ax.plot(steps, [100 * np.mean(matrix[k, : k + 1]) for k in range(rows)], "k--", linewidth=2, label="average (AA)")
    ax.set_xlabel("after training task")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xticks(steps)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_new_task_accuracy(accuracy: np.ndarray, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(1, len(accuracy) + 1), 100 * accuracy, marker="." if len(accuracy) > 30 else "o")
    ax.set_xlabel("task")
    ax.set_ylabel("accuracy on the task just trained (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
