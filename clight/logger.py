"""A CSV logger that keeps one step axis across the fresh Trainers of a run, and never loses a row to a kill."""

from __future__ import annotations

import csv
import io
import os
import time
import warnings
from typing import Any, Optional, Sequence

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

import clight.io as run_io


class SequenceCSVLogger(CSVLogger):
    """``CSVLogger`` whose steps continue from task to task (``step_offset`` is added to every
    step) and which appends to an existing ``metrics.csv`` when a run resumes (rank 0 only, like
    every write of the log).

    ``keep_rows``: on a resume, the rows the checkpoint being resumed from had seen written; the
    rows after them (logged by the killed attempt past its last checkpoint, and logged again
    by the resumed run) are dropped, so every step appears once (``None``: all are kept).
    ``new_run``: a log left in the folder is removed instead. ``flush()`` writes what is pending and
    returns the number of rows in the file. ``columns``: keys known before the first row (one per
    task), in the first header: a key first logged later makes the writer rewrite the whole file,
    which after every one of 100 short tasks cost more than the task's other writes together.

    Lightning saves after every logged step; rows are appended at most every ``WRITE_EVERY_S``
    seconds instead, and always by ``flush`` (before every checkpoint) and when a fit ends or
    fails. A kill loses no row a resume keeps: those past the last checkpoint are dropped anyway.
    """

    #: the longest a logged row waits in memory before it is appended to the file
    WRITE_EVERY_S = 1.0

    _experiment: Optional[CrashSafeWriter]

    def __init__(
        self,
        save_dir: str,
        name: str = "logs",
        keep_rows: Optional[int] = None,
        new_run: bool = False,
        columns: Sequence[str] = (),
    ) -> None:
        super().__init__(save_dir=save_dir, name=name, version="")
        self.step_offset = 0
        self.keep_rows, self.new_run, self.columns = keep_rows, new_run, list(columns)
        self.rows = 0
        self._written_at = time.monotonic()

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = CrashSafeWriter(self.log_dir)
            self.rows = self._experiment.start(self.keep_rows, self.new_run)
            if not self._experiment.metrics_keys:  # no header yet (a resumed log keeps its own)
                self._experiment.metrics_keys = sorted(set(self.columns))
        return self._experiment

    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None:
        super().log_metrics(metrics, None if step is None else step + self.step_offset)

    @rank_zero_only
    def save(self) -> None:
        if time.monotonic() - self._written_at >= self.WRITE_EVERY_S:
            self._write()

    @rank_zero_only
    def _write(self) -> None:
        pending = len(self.experiment.metrics)
        super().save()
        self.rows += pending
        self._written_at = time.monotonic()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._experiment is not None:
            self._write()

    def flush(self) -> int:
        """Write the pending rows, on disk (a checkpoint that counts them may follow); the rows in the file."""
        self._write()
        if self._experiment is not None:
            self._experiment.sync()
        return self.rows


class CrashSafeWriter(ExperimentWriter):
    """Lightning's CSV writer, with no write a kill can spoil: new rows are appended and flushed to
    disk; a new column (Lightning rewrites the file in place then) and the resume's trimming write
    the whole file under a temporary name and rename it; ``hparams.yaml`` likewise."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self._appended = False  # rows appended since the last sync

    def _check_log_dir_exists(self) -> None:
        pass  # Lightning deletes an existing metrics.csv here; ``start`` decides what is kept

    def start(self, keep_rows: Optional[int], new_run: bool) -> int:
        """Keep the first ``keep_rows`` rows of an existing log (``None``: all; ``new_run``: none, and
        no header); returns the rows kept."""
        path = self.metrics_file_path
        if not os.path.isfile(path):
            return 0
        if new_run:
            os.remove(path)
            return 0
        with open(path, newline="") as f:
            text = f.read()
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines.pop()  # a row cut short by a kill
        kept = lines if keep_rows is None else lines[: 1 + keep_rows]
        if keep_rows is not None and len(kept) < 1 + keep_rows:
            warnings.warn(
                f"{path} holds {max(len(kept) - 1, 0)} rows but the checkpoint resumed from counted {keep_rows}: "
                "some logged values are lost (the file was cut or replaced)",
                stacklevel=2,
            )
        if kept != lines or not text.endswith("\n"):
            run_io.write_text_atomic(path, "".join(kept))
        self.metrics_keys = next(csv.reader(kept[:1]), [])
        return max(len(kept) - 1, 0)

    def log_hparams(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)
        with run_io.atomic_output(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE)) as tmp:
            save_hparams_to_yaml(tmp, self.hparams)

    def save(self) -> None:
        if not self.metrics:
            return
        path = self.metrics_file_path
        exists = os.path.isfile(path)
        if self._record_new_keys() or not exists:
            rows = []
            if exists:
                with open(path, newline="") as f:
                    rows = list(csv.DictReader(f))
            run_io.write_text_atomic(path, self._csv(rows + self.metrics, header=True))
        else:  # Lightning saves after every logged step: flushed to disk by ``sync``, before a checkpoint
            run_io.append_text(path, self._csv(self.metrics, header=False), durable=False)
            self._appended = True
        self.metrics = []

    def sync(self) -> None:
        if self._appended:
            run_io.sync_file(self.metrics_file_path)
            self._appended = False

    def _csv(self, rows: list[dict], header: bool) -> str:
        out = io.StringIO(newline="")
        writer = csv.DictWriter(out, fieldnames=self.metrics_keys)
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
