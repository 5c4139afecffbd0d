"""SequenceRunner: train a model on a sequence of tasks, one fresh Trainer per fit."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import numpy as np

from clight.data.datamodule import TaskSequence
from clight.evaluation import evaluate_tasks
from clight.logger import SequenceCSVLogger
from clight.methods.base import ContinualCallback, RunContext, assign_state_keys
from clight.models.module import ContinualModule
from clight.progress import SequenceProgress, quiet_lightning_banners
from clight.runner.fit import RunnerSettings, check_trainer_kwargs, make_trainer
from clight.runner.processes import start_processes
from clight.runner.run_folder import Progress, RunFolder
from clight.runner.schedule import Fit
from clight.seeding import reseed_globals


@dataclass
class RunResult:
    run_dir: Path
    accuracy_matrix: np.ndarray
    metrics: dict
    matrices: dict = field(default_factory=dict)


class SequenceRunner:
    """Trains ``model`` on every task of ``data`` in order and records what it remembers.

    For each fit of the schedule (one per task, or one on all tasks for ``baseline="joint"``):
    the model's and the methods' ``on_task_start``, a fresh ``Trainer`` built from ``trainer``
    (fresh early stopping and checkpointing; the methods and the logger are shared by all
    fits), ``fit``, the ``on_task_end`` hooks, evaluation (a row of the accuracy matrix), then an
    atomic checkpoint and manifest. ``settings`` (or the same fields as keyword arguments:
    ``baseline``, ``evaluate``, ``max_steps_per_task``, ``early_stopping_patience``,
    ``monitor``, ``select_best``, ``checkpoint_every_epoch``) say how; see ``RunnerSettings``.
    Before anything runs, the model and every method check that they apply to the sequence.
    """

    def __init__(
        self,
        model: ContinualModule,
        data: TaskSequence,
        methods: Sequence[ContinualCallback] = (),
        trainer: Optional[dict] = None,
        run_dir: str = "runs/run",
        seed: int = 0,
        resume: bool = False,
        config: Optional[str] = None,
        settings: Optional[RunnerSettings] = None,
        **setting_overrides,
    ) -> None:
        self.settings = replace(settings or RunnerSettings(), **setting_overrides)
        self.trainer_kwargs = check_trainer_kwargs(trainer or {})
        self.model, self.data, self.methods = model, data, list(methods)
        self.folder = RunFolder(Path(run_dir))
        self.seed, self.resume, self.config = seed, resume, config
        self.schedule = self.settings.schedule()
        self.progress: Optional[Progress] = None
        self.logger: Optional[SequenceCSVLogger] = None
        self.trainable_per_fit: list[int] = []  # counted after each fit's on_task_start hooks

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    # -- the run --------------------------------------------------------------------------
    def run(self) -> RunResult:
        quiet_lightning_banners()
        info = self.data.info  # loads the data: a missing or malformed data set fails before the run folder exists
        self.model.check_compatible(info)
        for method in self.methods:
            method.check_compatible(self.model, self.data, info)
        assign_state_keys(self.methods)
        world = start_processes(self.trainer_kwargs)
        resumed = self.resume and self.folder.holds_run()
        self.folder.prepare(self.config, self.resume)
        reseed_globals(self.seed)
        self.logger = SequenceCSVLogger(str(self.run_dir))
        self.model.setup_sequence(info)
        context = RunContext(self.run_dir, self.seed, world.size, world.rank, resumed)
        for method in self.methods:
            method.setup_sequence(self.model, self.data, context)
        self.progress = self._restore() if resumed else Progress(self.data.num_tasks, self.schedule.describe())
        self.logger.log_hyperparams(
            {"model": self.model.describe(), "data": self.data.describe(), "methods": [m.describe() for m in self.methods],
             "runner": {**vars(self.settings), "seed": self.seed}}
        )
        display = SequenceProgress(self.data, enabled=self.trainer_kwargs.get("enable_progress_bar", True))
        fits = self.schedule.fits([t.name for t in self.data.tasks])
        for fit in fits[self.progress.finished_fits :]:
            self._run_fit(fit, display)
        return self._finish()

    def _run_fit(self, fit: Fit, display: SequenceProgress) -> None:
        tasks = [self.data.tasks[t] for t in fit.tasks]
        self.data.set_training_tasks(fit.tasks)
        reseed_globals(self.seed, fit.index)
        for task in tasks:
            self.model.on_task_start(task)
            for method in self.methods:
                method.on_task_start(self.model, task)
        self.trainable_per_fit[fit.index :] = [sum(p.numel() for p in self.model.trainable_parameters())]
        if fit.index == 0 and not self.progress.initial and self.schedule.scores_initial_model:
            self.progress.initial = evaluate_tasks(self.model, self.data)
        display.start(self.schedule.title(fit, self.data.num_tasks))
        started = time.perf_counter()
        trainer = make_trainer(self.trainer_kwargs, self.settings, self.methods, self.logger, self.run_dir,
                               self.folder.fit_checkpoint_dir(fit.index), self.seed, fit.index)
        self.model.train()  # Lightning keeps a module's eval mode when a fit starts
        resume_from = self.folder.fit_checkpoint_dir(fit.index) / "last.ckpt"
        ckpt_path = str(resume_from) if self.resume and resume_from.exists() else None
        trainer.fit(self.model, datamodule=self.data, ckpt_path=ckpt_path, weights_only=True)
        for task in tasks:
            self.model.on_task_end(task)
            for method in self.methods:
                method.on_task_end(self.model, task)
            self.data.on_task_end(task.index)
        row = evaluate_tasks(self.model, self.data, trainer.strategy, tasks=self.schedule.tasks_to_evaluate(fit))
        self.progress.add_row(row, time.perf_counter() - started, len(tasks))
        self.logger.step_offset += trainer.global_step
        self.progress.step_offset = self.logger.step_offset
        metrics = self.schedule.summary(self.progress.matrices, self.progress.initial.get("correct"))
        self.logger.log_metrics(_row_log(fit, row["correct"], metrics), step=0)
        self.logger.save()
        display.end(fit.index, row["correct"], metrics, self.progress.wall_time_per_task[-1])
        self.folder.save_boundary(self._state(), self.progress)
        trainer.strategy.barrier("clight-boundary")

    # -- state ------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "methods": {m.state_key: m.state_dict() for m in self.methods},
            "data": self.data.state_dict(),
            "step_offset": self.logger.step_offset,
            "trainable_per_fit": list(self.trainable_per_fit),
        }

    def _restore(self) -> Progress:
        progress = self.folder.read_progress(self.data.num_tasks, self.schedule.describe())
        if progress.finished_fits == 0:
            return progress
        for fit in self.schedule.fits([t.name for t in self.data.tasks])[: progress.finished_fits]:
            for t in fit.tasks:  # rebuild what the model creates per task (heads, adapters) before loading it
                self.model.on_task_start(self.data.tasks[t])
                self.model.on_task_end(self.data.tasks[t])
        state = self.folder.load_boundary()
        self.model.load_state_dict(state["model"])
        for method in self.methods:
            if method.state_key in state["methods"]:
                method.load_state_dict(state["methods"][method.state_key])
        self.data.load_state_dict(state["data"])
        self.logger.step_offset = int(state["step_offset"])
        self.trainable_per_fit = [int(n) for n in state.get("trainable_per_fit", [])]
        return progress

    def _finish(self) -> RunResult:
        metrics = self.schedule.summary(self.progress.matrices, self.progress.initial.get("correct"))
        metrics.update(
            {
                "baseline": self.settings.baseline,
                "schedule": self.schedule.describe(),
                "wall_time_seconds": float(sum(self.progress.wall_time_per_task)),
                "wall_time_per_task": self.progress.wall_time_per_task,
                "initial_accuracy": self.progress.initial.get("correct"),
                # per fit (one per task; one for a joint run); None for runs resumed from older checkpoints
                "trainable_parameters_per_task": (
                    self.trainable_per_fit if len(self.trainable_per_fit) == self.progress.finished_fits else None
                ),
                "model": self.model.describe(),
                "data": self.data.describe(),
                "methods": [m.describe() for m in self.methods],
            }
        )
        self.folder.finish(metrics, self.progress)
        matrices = {k: np.array(v) for k, v in self.progress.matrices.items()}
        return RunResult(self.run_dir, np.array(self.progress.matrices["correct"], dtype=float), metrics, matrices)


def _row_log(fit: Fit, row: list[float], metrics: dict) -> dict:
    log = {f"cl/acc_task_{j}": a for j, a in enumerate(row) if not np.isnan(a)}
    log.update({f"cl/{k}": v for k, v in metrics.items() if isinstance(v, float) and not np.isnan(v)})
    log["cl/tasks_finished"] = fit.index + 1
    return log
