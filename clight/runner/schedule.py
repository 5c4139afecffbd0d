"""The kind of run, as an object: which tasks each fit trains on, what is scored after it, and
how the resulting matrix is summarised and shown.

- ``Sequential``: one fit per task, every task scored after every fit (the accuracy matrix);
- ``NewTaskOnly``: one fit per task, only the task just trained is scored (new-task accuracy,
  for sequences of hundreds of tasks where the full matrix is not wanted);
- ``Joint``: one fit on all tasks at once (the joint-training upper bound), then one row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Optional

import numpy as np

from clight.metrics import summarize
from clight.metrics.scores import final_scores, summarize_scores
from clight.plots import plot_matrix, plot_new_task_accuracy, plot_task_curves

Baseline = Literal["sequential", "joint"]
Evaluation = Literal["all", "current"]


@dataclass(frozen=True)
class Fit:
    """One Trainer fit: its position (row of the matrix), the tasks it trains on, its name."""

    index: int
    tasks: tuple[int, ...]
    name: str


class Schedule:
    kind: ClassVar[str] = "schedule"
    #: whether the untrained model is scored before the first fit (forward transfer needs it)
    scores_initial_model: ClassVar[bool] = False
    #: whether the report shows the accuracy matrix (else a summary of new-task accuracy)
    shows_matrix: ClassVar[bool] = True
    #: the figures ``plot`` writes
    plot_files: ClassVar[tuple[str, ...]] = ("accuracy_matrix.png",)

    def fits(self, task_names: list[str]) -> list[Fit]:
        return [Fit(t, (t,), name) for t, name in enumerate(task_names)]

    def tasks_to_evaluate(self, fit: Fit) -> Optional[list[int]]:
        """The tasks scored after ``fit`` (``None``: all of them)."""
        return None

    def title(self, fit: Fit, num_tasks: int) -> str:
        return f"Task {fit.index + 1}/{num_tasks} · {fit.name}"

    def summary(
        self, matrices: dict[str, list[list[float]]], initial: Optional[list[float]], initial_scores: Optional[dict] = None
    ) -> dict:  # pragma: no cover - interface
        """The metrics of ``matrices`` (``correct``, and any other score the model counts);
        ``initial``: the untrained model's accuracy row, ``initial_scores`` its row of every score."""
        raise NotImplementedError

    def row_labels(self, rows: int) -> list[str]:
        return [str(k + 1) for k in range(rows)]

    def plot(self, matrix: np.ndarray, folder: Path) -> None:
        plot_matrix(matrix, folder / "accuracy_matrix.png", self.row_labels(matrix.shape[0]))

    def describe(self) -> dict:
        return {"kind": self.kind}


class Sequential(Schedule):
    kind = "sequential"
    scores_initial_model = True
    plot_files = ("accuracy_matrix.png", "task_accuracy.png")

    def summary(self, matrices, initial, initial_scores=None):
        metrics = summarize(np.array(matrices["correct"], dtype=float), _complete(initial))
        if "correct_task_aware" in matrices:
            metrics["task_aware"] = summarize(matrices["correct_task_aware"])
        metrics["accuracy_matrix"] = [
            [None if np.isnan(v) else v for v in row] for row in np.array(matrices["correct"], float).tolist()
        ]
        scores = summarize_scores(matrices, initial_scores)
        if scores:
            metrics["scores"] = scores
        return metrics

    def plot(self, matrix, folder):
        super().plot(matrix, folder)
        plot_task_curves(matrix, folder / "task_accuracy.png")


class NewTaskOnly(Schedule):
    kind = "sequential_current"
    shows_matrix = False
    plot_files = ("new_task_accuracy.png",)

    def tasks_to_evaluate(self, fit):
        return list(fit.tasks)

    def summary(self, matrices, initial, initial_scores=None):
        matrix = np.array(matrices["correct"], dtype=float)
        diagonal = [float(matrix[k, k]) for k in range(matrix.shape[0])]
        return {
            "tasks_finished": len(diagonal),
            "average_accuracy": None,
            "new_task_accuracy": diagonal,
            "average_new_task_accuracy": float(np.mean(diagonal)),
            "note": "evaluate=current: only the task just trained was scored after each task (new-task accuracy)",
        }

    def plot(self, matrix, folder):
        plot_new_task_accuracy(np.diag(matrix), folder / "new_task_accuracy.png")


class Joint(Schedule):
    kind = "joint"

    def fits(self, task_names):
        return [Fit(0, tuple(range(len(task_names))), "joint")]

    def title(self, fit, num_tasks):
        return f"Joint training on all {num_tasks} tasks"

    def summary(self, matrices, initial, initial_scores=None):
        matrix = np.array(matrices["correct"], dtype=float)
        scores = final_scores(matrices)
        return {
            "tasks_finished": int(matrix.shape[1]),
            "average_accuracy": float(np.nanmean(matrix[-1])),
            "average_incremental_accuracy": None,
            "backward_transfer": None,
            "forgetting": None,
            "forward_transfer": None,
            "note": "joint training: one model trained on all tasks at once; one row of accuracies",
        } | ({"scores": scores} if scores else {})

    def row_labels(self, rows):
        return ["joint"] * rows


SCHEDULES: dict[str, type[Schedule]] = {s.kind: s for s in (Sequential, NewTaskOnly, Joint)}


def make_schedule(baseline: Baseline = "sequential", evaluate: Evaluation = "all") -> Schedule:
    """The schedule a config's ``runner.baseline`` / ``runner.evaluate`` names (joint scores all tasks)."""
    if baseline == "joint":
        return Joint()
    return NewTaskOnly() if evaluate == "current" else Sequential()


def schedule_from_manifest(manifest: dict) -> Schedule:
    """The schedule a run folder was written by (older manifests name it by baseline/evaluate)."""
    kind = (manifest.get("schedule") or {}).get("kind")
    if kind in SCHEDULES:
        return SCHEDULES[kind]()
    return make_schedule(manifest.get("baseline", "sequential"), manifest.get("evaluate", "all"))


def _complete(initial: Optional[list[float]]) -> Optional[list[float]]:
    """The initial row, if it scores every task after the first (forward transfer needs them)."""
    if initial is None or any(np.isnan(initial[1:])):
        return None
    return initial
