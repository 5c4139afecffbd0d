"""A CSV logger that keeps one step axis across the fresh Trainers of a run."""

from __future__ import annotations

import csv
import os
import warnings
from typing import Optional

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger


class SequenceCSVLogger(CSVLogger):
    """``CSVLogger`` whose steps continue from task to task (``step_offset`` is added to every
    step) and which appends to an existing ``metrics.csv`` when a run resumes (rank 0 only, like
    every write of the log).

    ``keep_rows``: on a resume, the rows the checkpoint being resumed from had seen written; the
    rows after them (logged by the killed attempt past its last checkpoint, and logged again
    by the resumed run) are dropped, so every step appears once. ``flush()`` writes what is
    pending and returns the number of rows in the file.
    """

    def __init__(self, save_dir: str, name: str = "logs", keep_rows: Optional[int] = None) -> None:
        super().__init__(save_dir=save_dir, name=name, version="")
        self.step_offset = 0
        self.keep_rows = keep_rows
        self.rows = 0

    @property
    @rank_zero_experiment
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
            lines = previous.splitlines(keepends=True)
            if self.keep_rows is not None:
                lines = lines[: 1 + self.keep_rows]
            with open(path, "w", newline="") as f:
                f.write("".join(lines))
            self.rows = max(len(lines) - 1, 0)
            header = next(csv.reader(lines[:1]), [])
            experiment.metrics_keys.extend(k for k in header if k not in experiment.metrics_keys)
        return experiment

    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None:
        super().log_metrics(metrics, None if step is None else step + self.step_offset)

    @rank_zero_only
    def save(self) -> None:
        pending = len(self.experiment.metrics)
        super().save()
        self.rows += pending

    def flush(self) -> int:
        self.save()
        return self.rows
