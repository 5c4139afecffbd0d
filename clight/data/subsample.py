"""Subsample: cap every task's splits to a fixed number of samples per class.

Wraps any scenario whose tasks are ``TaskView``s (SplitClasses, DatasetList, ...) so a large data
set can be run at a small, stated scale (CPU smoke runs, quick comparisons). Which samples are
kept depends on the run seed alone, so every rank and every resumed run keeps the same ones.
"""

from __future__ import annotations

from typing import Optional

import torch

from clight.data.scenarios import Scenario
from clight.data.task import Task
from clight.data.views import TaskView
from clight.seeding import seeded_generator


def cap_per_class(view: TaskView, per_class: Optional[int], generator: torch.Generator) -> None:
    """Keep at most ``per_class`` random samples of every class of ``view`` (in place, sorted)."""
    if per_class is None:
        return
    if per_class < 1:
        raise ValueError(f"a per-class cap must be a positive integer, got {per_class}")
    targets = view.targets
    keep = []
    for c in targets.unique().tolist():
        rows = (targets == c).nonzero().flatten()
        keep.append(rows[torch.randperm(len(rows), generator=generator)[:per_class]])
    view.indices = view.indices[torch.cat(keep).sort().values]


class Subsample(Scenario):
    """``scenario`` with each task's train / val / test split capped to N samples per class."""

    def __init__(
        self,
        scenario: Scenario,
        train_per_class: Optional[int] = None,
        val_per_class: Optional[int] = None,
        test_per_class: Optional[int] = None,
    ) -> None:
        self.scenario = scenario
        self.caps = {"train": train_per_class, "val": val_per_class, "test": test_per_class}

    @property
    def setting(self) -> str:  # type: ignore[override]
        return self.scenario.setting

    @property
    def num_classes(self) -> int:
        return self.scenario.num_classes

    def build(self, seed: int, val_fraction: float) -> list[Task]:
        tasks = self.scenario.build(seed, val_fraction)
        for task in tasks:
            for i, (split, cap) in enumerate(self.caps.items()):
                view = getattr(task, split)
                if cap is not None and not isinstance(view, TaskView):
                    raise TypeError(f"Subsample needs TaskView splits; task {task.index}'s {split} is {type(view).__name__}")
                cap_per_class(view, cap, seeded_generator(seed, 11, task.index, i))
        return tasks
