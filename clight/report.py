"""Tables and plots from a run folder (``clight report RUN_DIR``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Union

import numpy as np

from clight.io import read_json, write_text_atomic
from clight.metrics import FWT_CLASS_INCREMENTAL
from clight.runner.schedule import schedule_from_manifest

MATRIX_FILES = {"correct": "accuracy_matrix.csv", "correct_task_aware": "accuracy_matrix_task_aware.csv"}
#: the metrics ``clight report`` shows, with their units (accuracies in %, differences of
#: accuracies in percentage points)
SUMMARY_KEYS = {
    "average_accuracy": "%",
    "average_incremental_accuracy": "%",
    "backward_transfer": "pp",
    "forgetting": "pp",
    "forward_transfer": "pp",
    "wall_time_seconds": "s",
}


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
    """(Re)write the matrix CSVs and the plots; returns the metrics of the run so far."""
    run_dir = Path(run_dir)
    manifest = load_run(run_dir)
    schedule = schedule_from_manifest(manifest)
    for name, filename in MATRIX_FILES.items():
        if name in manifest["matrices"]:
            write_text_atomic(run_dir / filename, _matrix_csv(np.array(manifest["matrices"][name], dtype=float)))
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    schedule.plot(np.array(manifest["matrices"]["correct"], dtype=float), plots)
    return schedule.summary(manifest["matrices"], None)


def missing_report_files(run_dir: Union[str, Path]) -> list[str]:
    """The tables and figures ``write_report`` writes that ``run_dir`` lacks."""
    run_dir = Path(run_dir)
    manifest = load_run(run_dir)
    expected = [f for name, f in MATRIX_FILES.items() if name in manifest["matrices"]]
    expected += [f"plots/{f}" for f in schedule_from_manifest(manifest).plot_files]
    return [f for f in expected if not (run_dir / f).is_file()]


def format_report(run_dir: Union[str, Path]) -> "object":
    """A rich renderable: the accuracy matrix and the metrics."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    run_dir = Path(run_dir)
    manifest = load_run(run_dir)
    schedule = schedule_from_manifest(manifest)
    matrix = np.array(manifest["matrices"]["correct"], dtype=float)
    if not schedule.shows_matrix:
        diagonal = 100 * np.diag(matrix)
        summary = Table(title=f"new-task accuracy (%) of {run_dir}", show_header=False)
        window = max(1, min(10, len(diagonal) // 2))
        summary.add_row(f"first {window} tasks", f"{diagonal[:window].mean():.1f}")
        summary.add_row(f"last {window} tasks", f"{diagonal[-window:].mean():.1f}")
        summary.add_row("all tasks", f"{diagonal.mean():.1f}")
        summary.add_row("status", manifest.get("status", "?"))
        _environment_rows(summary, manifest)
        return summary
    table = Table(title=f"accuracy matrix (%) of {run_dir}")
    table.add_column("after task")
    for j in range(matrix.shape[1]):
        table.add_column(str(j + 1), justify="right")
    for label, row in zip(schedule.row_labels(matrix.shape[0]), matrix):
        table.add_row(label, *["-" if math.isnan(v) else f"{100 * v:.1f}" for v in row])
    metrics_path = run_dir / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.exists() else schedule.summary(manifest["matrices"], None)
    summary = Table(title="metrics (% accuracy; pp: percentage points)", show_header=False)
    for key, unit in SUMMARY_KEYS.items():
        value = metrics.get(key)
        if value is None:
            text = "n/a"
        elif key == "wall_time_seconds":
            text = f"{value:.1f} s"
        else:
            text = f"{100 * value:.2f} {unit}"
        summary.add_row(key, text)
    for name, score in (metrics.get("scores") or {}).items():
        average = score.get("average_accuracy")
        summary.add_row(f"{name}: final average", "n/a" if average is None else f"{100 * average:.2f} %")
    if metrics.get("forward_transfer") is not None:
        convention = metrics.get("forward_transfer_convention", "")
        summary.add_row("FWT convention", escape(f"{convention}; {FWT_CLASS_INCREMENTAL}"))
    summary.add_row("status", manifest.get("status", "?"))
    _environment_rows(summary, manifest)
    return Group(table, summary)


def _environment_rows(summary, manifest: dict) -> None:
    """Where the run ran (``manifest.json``'s ``environments``: where it started, then where it was resumed)."""
    from rich.markup import escape

    from clight.environment import summary as environment_summary

    environments = manifest.get("environments") or []
    for k, env in enumerate(environments):
        summary.add_row("environment" if k == 0 else "resumed in", escape(environment_summary(env)))
