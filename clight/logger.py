"""A CSV logger that keeps one step axis across the fresh Trainers of a run."""

from __future__ import annotations

import csv
import os
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
        experiment = super().experiment
        if not experiment.metrics_keys and os.path.isfile(experiment.metrics_file_path):
            with open(experiment.metrics_file_path, newline="") as f:
                header = next(csv.reader(f), [])
            experiment.metrics_keys.extend(k for k in header if k not in experiment.metrics_keys)
        return experiment

    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None:
        super().log_metrics(metrics, None if step is None else step + self.step_offset)
