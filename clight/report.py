"""Tables and plots from a run folder (``clight report RUN_DIR``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Union

import numpy as np

from clight.io import read_json, write_text_atomic
from clight.metrics import summarize

MATRIX_FILES = {"correct": "accuracy_matrix.csv", "correct_task_aware": "accuracy_matrix_task_aware.csv"}


def _matrix_csv(matrix: np.ndarray, row_label: str = "after_task") -> str:
    header = ",".join([row_label] + [f"task_{j}" for j in range(matrix.shape[1])])
    lines = [header]
    for k, row in enumerate(matrix):
        lines.append(",".join([str(k)] + ["" if math.isnan(v) else f"{v:.6f}" for v in row]))
    return "\n".join(lines) + "\n"


def load_run(run_dir: Union[str, Path]) -> dict:
    run_dir = Path(run_dir)
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a clight run folder (no manifest.json)")
    manifest = read_json(manifest_path)
    if not manifest.get("matrices"):
        raise ValueError(f"{run_dir} has no finished task yet: nothing to report")
    return manifest


def write_report(run_dir: Union[str, Path]) -> dict:
    """(Re)write the matrix CSVs and the plots; returns the metrics of the main matrix."""
    run_dir = Path(run_dir)
    manifest = load_run(run_dir)
    for name, filename in MATRIX_FILES.items():
        if name in manifest["matrices"]:
            write_text_atomic(run_dir / filename, _matrix_csv(np.array(manifest["matrices"][name], dtype=float)))
    matrix = np.array(manifest["matrices"]["correct"], dtype=float)
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    if manifest.get("evaluate") == "current":
        diagonal = np.diag(matrix)
        plot_new_task_accuracy(diagonal, plots / "new_task_accuracy.png")
        return {"average_new_task_accuracy": float(diagonal.mean())}
    plot_matrix(matrix, plots / "accuracy_matrix.png", joint=manifest.get("baseline") == "joint")
    if manifest.get("baseline") != "joint":
        plot_task_curves(matrix, plots / "task_accuracy.png")
    return summarize(matrix) if manifest.get("baseline") != "joint" else {"average_accuracy": float(np.nanmean(matrix[-1]))}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_matrix(matrix: np.ndarray, path: Path, joint: bool = False) -> None:
    plt = _pyplot()
    rows, cols = matrix.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * cols, 1.2 + 0.6 * rows))
    image = ax.imshow(100 * matrix, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    for k in range(rows):
        for j in range(cols):
            if not math.isnan(matrix[k, j]):
                ax.text(j, k, f"{100 * matrix[k, j]:.0f}", ha="center", va="center", color="white" if matrix[k, j] < 0.6 else "black", fontsize=8)
    ax.set_xticks(range(cols), [str(j + 1) for j in range(cols)])
    ax.set_yticks(range(rows), ["joint"] if joint else [str(k + 1) for k in range(rows)])
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after training task")
    ax.set_title("accuracy (%)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_new_task_accuracy(accuracy: np.ndarray, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(1, len(accuracy) + 1), 100 * accuracy, marker="." if len(accuracy) > 30 else "o")
    ax.set_xlabel("task")
    ax.set_ylabel("accuracy on the task just trained (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_report(run_dir: Union[str, Path]) -> "object":
    """A rich renderable: the accuracy matrix and the metrics."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    run_dir = Path(run_dir)
    manifest = load_run(run_dir)
    matrix = np.array(manifest["matrices"]["correct"], dtype=float)
    if manifest.get("evaluate") == "current":
        diagonal = 100 * np.diag(matrix)
        summary = Table(title=f"new-task accuracy (%) of {run_dir}", show_header=False)
        window = max(1, min(10, len(diagonal) // 2))
        summary.add_row(f"first {window} tasks", f"{diagonal[:window].mean():.1f}")
        summary.add_row(f"last {window} tasks", f"{diagonal[-window:].mean():.1f}")
        summary.add_row("all tasks", f"{diagonal.mean():.1f}")
        summary.add_row("status", manifest.get("status", "?"))
        return summary
    table = Table(title=f"accuracy matrix (%) of {run_dir}")
    table.add_column("after task")
    for j in range(matrix.shape[1]):
        table.add_column(str(j + 1), justify="right")
    for k, row in enumerate(matrix):
        label = "joint" if manifest.get("baseline") == "joint" else str(k + 1)
        table.add_row(label, *["-" if math.isnan(v) else f"{100 * v:.1f}" for v in row])
    metrics_path = run_dir / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.exists() else summarize(matrix)
    summary = Table(title="metrics", show_header=False)
    for key in ("average_accuracy", "average_incremental_accuracy", "backward_transfer", "forgetting", "forward_transfer", "wall_time_seconds"):
        value = metrics.get(key)
        if value is None:
            text = "n/a"
        elif key == "wall_time_seconds":
            text = f"{value:.1f} s"
        else:
            text = f"{100 * value:.2f}"
        summary.add_row(key, text)
    if metrics.get("forward_transfer") is not None:
        summary.add_row("FWT convention", escape(metrics.get("forward_transfer_convention", "")))
    summary.add_row("status", manifest.get("status", "?"))
    return Group(table, summary)
