"""One finished run as the comparison sees it, and the task-sequence check.

Everything is read from the run folder as the runner wrote it (``manifest.json`` for the
accuracy matrix, ``metrics.json`` for the metrics and settings, the control files); nothing is
recomputed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import yaml

from clight.compare.controls import Control, read_controls
from clight.compare.routing import RoutingShares, read_routing
from clight.contract import ConfigError
from clight.io import read_json
from clight.shorten import short_repr

#: the fields of ``TaskSequence.describe()`` that make two runs' task sequences the same one
SEQUENCE_FIELDS = ("scenario", "setting", "seed", "tokenizer")
TASK_FIELDS = ("name", "classes", "train", "val", "test")
_MAX_LISTED = 8


class SequenceMismatch(ConfigError):
    """Runs in one comparison whose task sequences differ."""


class RunNotFinished(ValueError):
    pass


def task_sequence(data: dict) -> dict:
    """The identity of a task sequence from ``TaskSequence.describe()``: scenario, setting, seed,
    tokenizer (text sequences) and, per task, name, classes and train/val/test sizes. Batch size,
    replay and general-text settings are how a method trains, not which tasks it sees."""
    identity = {key: data.get(key) for key in SEQUENCE_FIELDS if key in data}
    identity["tasks"] = [{key: task.get(key) for key in TASK_FIELDS} for task in data.get("tasks", [])]
    return identity


def sequence_differences(a: dict, b: dict) -> list[str]:
    """The fields in which two sequence identities differ, as ``field: a vs b`` lines."""
    diffs = [
        f"{key}: {short_repr(a.get(key))} vs {short_repr(b.get(key))}" for key in SEQUENCE_FIELDS if a.get(key) != b.get(key)
    ]
    if len(a["tasks"]) != len(b["tasks"]):
        diffs.append(f"number of tasks: {len(a['tasks'])} vs {len(b['tasks'])}")
    for t, (ta, tb) in enumerate(zip(a["tasks"], b["tasks"])):
        diffs += [
            f"task {t + 1} {key}: {short_repr(ta[key])} vs {short_repr(tb[key])}" for key in TASK_FIELDS if ta[key] != tb[key]
        ]
    return diffs


def task_set(identity: dict) -> dict:
    """A sequence identity without what replicates may vary (the seed, the task order): the
    tasks sorted by name, each with its number of classes instead of their global ids."""
    tasks = [
        dict(t, classes=len(t["classes"]) if isinstance(t.get("classes"), list) else t.get("classes")) for t in identity["tasks"]
    ]
    return {**{k: v for k, v in identity.items() if k != "seed"}, "tasks": sorted(tasks, key=lambda t: str(t.get("name")))}


def check_same_sequence(sequences: list[tuple[str, dict]]) -> None:
    """Raise ``SequenceMismatch`` naming every run whose tasks differ from the first run's. Runs may
    differ by seed and by task order (``clight compare`` groups such replicates)."""
    (first, reference), problems = sequences[0], []
    for name, identity in sequences[1:]:
        diffs = sequence_differences(task_set(reference), task_set(identity))
        if diffs:
            listed = diffs[:_MAX_LISTED] + ([f"... and {len(diffs) - _MAX_LISTED} more"] if len(diffs) > _MAX_LISTED else [])
            problems.append(f"{name} differs from {first} in\n    " + "\n    ".join(listed))
    if problems:
        raise SequenceMismatch(
            "these runs do not share one task sequence, so their figures are not comparable (nothing was run):\n  "
            + "\n  ".join(problems)
            + "\nGive every config the same tasks (seed, task order, batch size and replay may differ)."
        )


@dataclass
class RunRecord:
    """A finished run: its name in the table, folder, how the comparison got it (``read``,
    ``resumed`` or ``started``), metrics.json, the accuracy matrix, the logged controls, the
    routing shares of a method that routes samples without a task id, the run's other score
    matrices (``exact_match``, ``rouge_l``, ...) and its config."""

    name: str
    run_dir: Path
    status: str
    metrics: dict
    matrix: np.ndarray
    controls: list[Control] = field(default_factory=list)
    routing: Optional[RoutingShares] = None
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    config: Optional[dict] = None

    @property
    def seed(self) -> Any:
        return (self.metrics.get("data") or {}).get("seed")

    @property
    def task_names(self) -> list[str]:
        return [str(t.get("name")) for t in (self.metrics.get("data") or {}).get("tasks", [])]

    def final_by_task(self, matrix: Optional[np.ndarray] = None) -> dict[str, float]:
        """``{task name: score after the last fit}`` (accuracy, or another score's ``matrix``)."""
        matrix = self.matrix if matrix is None else matrix
        if self.schedule == "sequential_current" or len(self.task_names) != matrix.shape[1]:
            return {}
        return {name: float(v) for name, v in zip(self.task_names, matrix[-1])}

    @property
    def schedule(self) -> str:
        return (self.metrics.get("schedule") or {}).get("kind") or self.metrics.get("baseline", "sequential")

    @property
    def sequence(self) -> dict:
        return task_sequence(self.metrics.get("data") or {})

    @property
    def num_tasks(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def final_accuracy(self) -> Optional[list[float]]:
        """Accuracy on every task after the last fit (``None``: the run scored only the new task)."""
        if self.schedule == "sequential_current":
            return None
        return [float(v) for v in self.matrix[-1]]

    @property
    def new_task_accuracy(self) -> Optional[list[float]]:
        """``a[t][t]`` for every task (``None`` for a joint run: no task is ever new)."""
        if self.schedule == "joint":
            return None
        if "new_task_accuracy" in self.metrics:
            return [float(v) for v in self.metrics["new_task_accuracy"]]
        return [float(self.matrix[t, t]) for t in range(self.matrix.shape[0])]

    def trainable(self) -> tuple[Union[int, list[int], None], str]:
        """Trainable parameters per task as the run recorded them, and where that figure comes from."""
        return trainable_per_task(self.metrics)


def trainable_per_task(metrics: dict) -> tuple[Any, str]:
    """In order: a method's or the model's ``describe()["trainable_per_task"]`` (what the method
    says it updates per task), the model's ``budget_per_task["trainable"]`` (CLR), the runner's
    count of ``trainable_parameters()`` at each task start, the model's count at the end of the run."""
    model = metrics.get("model") or {}
    for info in [*(metrics.get("methods") or []), model]:
        if info.get("trainable_per_task") is not None:
            return info["trainable_per_task"], f"{info.get('class', '?')}.describe()['trainable_per_task']"
    budget = model.get("budget_per_task") or {}
    if budget.get("trainable") is not None:
        return budget["trainable"], f"{model.get('class', 'model')}.describe()['budget_per_task']['trainable']"
    if metrics.get("trainable_parameters_per_task"):
        return list(metrics["trainable_parameters_per_task"]), "trainable_parameters() counted by the runner at each task start"
    if model.get("trainable_parameters") is not None:
        return model["trainable_parameters"], "trainable_parameters() at the end of the run (not per task)"
    return None, "not recorded"


def read_manifest(run_dir: Path) -> Optional[dict]:
    path = Path(run_dir) / "manifest.json"
    return read_json(path) if path.exists() else None


def read_run(run_dir: Union[str, Path], name: Optional[str] = None, status: str = "read") -> RunRecord:
    """The finished run in ``run_dir`` (``RunNotFinished`` if it is not finished)."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if manifest is None:
        raise FileNotFoundError(f"{run_dir} is not a clight run folder (no manifest.json)")
    if manifest.get("status") != "finished" or not (run_dir / "metrics.json").exists():
        done = len(manifest.get("matrices", {}).get("correct", []))
        raise RunNotFinished(
            f"{run_dir} is not finished ({done} of {manifest.get('num_tasks', '?')} fits done). Resume it with "
            f"`clight fit --config CONFIG --resume {run_dir}` (CONFIG: the config you started it with), or pass that "
            "config to `clight compare`, which resumes unfinished runs."
        )
    metrics = read_json(run_dir / "metrics.json")
    matrices = {k: np.array(v, dtype=float) for k, v in manifest["matrices"].items()}
    scores = {k: v for k, v in matrices.items() if k not in ("correct", "correct_task_aware")}
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else None
    return RunRecord(
        name or run_dir.name,
        run_dir,
        status,
        metrics,
        matrices["correct"],
        read_controls(run_dir, metrics),
        read_routing(metrics),
        scores,
        config,
    )
