"""A CSV logger that keeps one step axis across the fresh Trainers of a run."""

from __future__ import annotations

import csv
import os
import warnings
from typing import Optional

from lightning.pytorch.loggers import CSVLogger


class SequenceCSVLogger(CSVLogger):
    """``CSVLogger`` whose steps continue from task to task (``step_offset`` is added to every
    step) and which appends to an existing ``metrics.csv`` when a run resumes."""

    def __init__(self, save_dir: str, name: str = "logs") -> None:
        super().__init__(save_dir=save_dir, name=name, version="")
        self.step_offset = 0

    @property
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        path = os.path.join(self.log_dir, "metrics.csv")
        previous = open(path, newline="").read() if os.path.isfile(path) else None
        with warnings.catch_warnings():
            # Lightning deletes an existing metrics.csv here; a resumed run puts it back and appends.
            warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
            experiment = super().experiment
        if previous is not None and hasattr(experiment, "metrics_keys"):
            with open(path, "w", newline="") as f:
                f.write(previous)
            header = next(csv.reader(previous.splitlines()), [])
            experiment.metrics_keys.extend(k for k in header if k not in experiment.metrics_keys)
        return experiment

    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None:
        super().log_metrics(metrics, None if step is None else step + self.step_offset)
