"""SequenceRunner: train a model on a sequence of tasks, one fresh Trainer per fit."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import numpy as np
from lightning.pytorch.utilities.exceptions import SIGTERMException

from clight.data.datamodule import TaskSequence
from clight.distributed import broadcast_from_rank_zero
from clight.environment import with_current
from clight.evaluation import evaluate_tasks
from clight.export import export_model
from clight.io import StorageError, read_json
from clight.logger import SequenceCSVLogger
from clight.methods.base import ContinualCallback, RunContext
from clight.models.module import ContinualModule
from clight.progress import SequenceProgress, quiet_lightning_banners
from clight.rank_check import check_rank_consistency
from clight.runner.checkpoints import EpochCheckpoint, ResumePoint
from clight.runner.fit import RunnerSettings, check_trainer_kwargs, make_trainer
from clight.runner.interrupt import RunInterrupted, StopRequest
from clight.runner.lock import FolderLock
from clight.runner.opening import open_run_folder, reopen_finished
from clight.runner.preflight import check_run
from clight.runner.processes import start_processes
from clight.runner.restore import load_boundary_state
from clight.runner.run_folder import BOUNDARY_CHECKPOINT, Progress, Resume, RunFolder, RunFolderError
from clight.runner.schedule import Fit
from clight.runner.sharding import shards_parameters
from clight.runner.user_loggers import ContinuingSteps, split_user_parts
from clight.seeding import reseed_globals
from clight.shorten import shorten


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

    Before the run folder is touched, the model and every method check that they apply to the
    sequence, the settings are checked (``preflight``), and with ``resume=True`` the folder's
    manifest, checkpoints and config are read and checked (``RunFolder.open_for_resume``): a
    ``config`` (the resolved YAML) that differs from the run's in a setting that changes results
    is refused unless ``allow_config_change``, which records the change in the run folder. A
    resumed run continues from the newest good epoch checkpoint of the running fit, else from
    the last finished fit. SIGINT and SIGTERM stop it at the next batch (``RunInterrupted``).
    The folder is locked while the run goes on (``clight.runner.lock``): a second run or resume
    of it is refused. ``resume_command`` (set by ``clight fit``) is the command that continues the
    run, printed when it stops.
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
        allow_config_change: bool = False,
        **setting_overrides,
    ) -> None:
        self.settings = replace(settings or RunnerSettings(), **setting_overrides)
        kwargs, self._given_loggers, user_callbacks = split_user_parts(trainer or {})
        self.user_loggers: list[ContinuingSteps] = []
        self.trainer_kwargs = check_trainer_kwargs(kwargs)
        self.model, self.data, self.methods = model, data, list(methods)
        self.user_callbacks = user_callbacks  # the user's Lightning callbacks, after the methods in every Trainer
        self.folder = RunFolder(Path(run_dir))
        self.seed, self.resume, self.config = seed, resume, config
        self.allow_config_change = allow_config_change
        self.schedule = self.settings.schedule()
        self.progress: Progress  # both set by run()
        self.logger: SequenceCSVLogger
        self.trainable_per_fit: list[int] = []  # counted after each fit's on_task_start hooks
        self.stop = StopRequest()
        self._resume_point: Optional[ResumePoint] = None
        self.committed: Optional[Progress] = None  # the progress the run folder holds: all a failure may record
        self.resume_command: Optional[str] = None

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    # -- the run --------------------------------------------------------------------------
    def run(self) -> RunResult:
        quiet_lightning_banners()
        info = check_run(self.model, self.data, self.methods, self.trainer_kwargs, self.settings)
        lock = FolderLock(self.run_dir)
        try:
            fit_names = [f.name for f in self._fits()]
            args = (self.data.num_tasks, self.schedule.describe(), self.config, self.allow_config_change, fit_names)
            resume = open_run_folder(self.folder, lock, self.resume, *args)
            if resume is not None and resume.status == "finished":
                reopen_finished(self.folder, resume)
                self.progress = resume.progress
                return self._result(read_json(self.run_dir / "metrics.json"))
            return self._train(info, resume)
        except StorageError as exc:
            exc.hint = f"{self.run_dir} keeps what was finished; once there is room, continue with: {self._continue_command()}"
            raise
        finally:
            lock.release()

    def _train(self, info, resume: Optional[Resume]) -> RunResult:
        world = start_processes(self.trainer_kwargs)
        self.progress = resume.progress if resume else Progress(self.data.num_tasks, self.schedule.describe(), log_rows=0)
        self.progress.environments = with_current(self.progress.environments)
        self.folder.prepare(self.config, self.progress, resume)
        self.committed = self.progress.snapshot()
        reseed_globals(self.seed)
        self.logger = SequenceCSVLogger(
            str(self.run_dir),
            keep_rows=resume.log_rows if resume else None,
            new_run=resume is None,
            columns=[_accuracy_key(j) for j in range(info.num_tasks)],
        )
        self.user_loggers = [ContinuingSteps(logger, self.logger) for logger in self._given_loggers]
        self.model.setup_sequence(info)
        trained_before = resume is not None and (resume.boundary is not None or resume.point is not None)
        context = RunContext(self.run_dir, self.seed, world.size, world.rank, trained_before)
        for method in self.methods:
            method.setup_sequence(self.model, self.data, context)
        if resume is not None and resume.boundary is not None:
            self._restore(resume.boundary)
        self._resume_point = resume.point if resume else None
        self.logger.log_hyperparams(
            {
                "model": self.model.describe(),
                "data": self.data.describe(),
                "methods": [m.describe() for m in self.methods],
                "runner": {**vars(self.settings), "seed": self.seed},
            }
        )
        display = SequenceProgress(self.data, enabled=self.trainer_kwargs.get("enable_progress_bar", True))
        fits = self._fits()
        self.stop.install()
        try:
            for fit in fits[self.progress.finished_fits :]:
                self.stop.check()
                self._run_fit(fit, display)
        except RunInterrupted as exc:
            self._close_user_loggers("interrupted")
            self._mark("interrupted", interrupted_by=str(exc))
            raise RunInterrupted(exc.signum, self._interrupted_message(exc, len(fits))) from None
        except Exception as exc:
            self._close_user_loggers("failed")
            self._mark("failed", error=shorten(f"{type(exc).__name__}: {exc}", 2000))
            raise
        finally:
            self.stop.restore()
        self._close_user_loggers("success")
        return self._finish()

    def _close_user_loggers(self, status: str) -> None:
        for logger in self.user_loggers:
            logger.close(status)

    def _fits(self) -> list[Fit]:
        return self.schedule.fits([t.name for t in self.data.tasks])

    def _run_fit(self, fit: Fit, display: SequenceProgress) -> None:
        tasks = [self.data.tasks[t] for t in fit.tasks]
        self.data.set_training_tasks(fit.tasks)
        reseed_globals(self.seed, fit.index)
        for task in tasks:
            self.model.on_task_start(task)
            for method in self.methods:
                method.on_task_start(self.model, task)
        trainable = sum(p.numel() for p in self.model.trainable_parameters())
        self.trainable_per_fit[fit.index :] = [trainable]
        if fit.index == 0 and not self.progress.initial and self.schedule.scores_initial_model:
            self.progress.initial = evaluate_tasks(self.model, self.data)
            self.folder.save_progress(self.progress)
            self.committed = self.progress.snapshot()
        display.start(self.schedule.title(fit, self.data.num_tasks))
        started = time.perf_counter()
        point, self._resume_point = self._resume_point, None
        if point is not None:
            point.check_fits(self.model)
        trainer = make_trainer(
            self.trainer_kwargs,
            self.settings,
            [*self.methods, *self.user_callbacks],
            [self.logger, *self.user_loggers],
            self.run_dir,
            self.folder.fit_checkpoint_dir(fit.index),
            self.seed,
            fit.index,
            self.stop,
        )
        if trainable == 0 and any(m.gradient_free for m in self.methods):
            # nothing to step (a prototype classifier on a frozen backbone): no Lightning fit, whose DDP
            # wrapper refuses a model without trainable parameters; the methods learn in on_task_end
            self.model.to(trainer.strategy.root_device)
        else:
            self.model.train()  # Lightning keeps a module's eval mode when a fit starts
            self._fit(trainer, point)
        for task in tasks:
            self.model.on_task_end(task)
            for method in self.methods:
                method.on_task_end(self.model, task)
            self.data.on_task_end(task.index)
        if self.settings.check_rank_consistency:
            check_rank_consistency(self.model, self.methods, self.data, fit.index)
        row = evaluate_tasks(self.model, self.data, trainer.strategy, tasks=self.schedule.tasks_to_evaluate(fit))
        self.progress.add_row(row, time.perf_counter() - started + _seconds_before(trainer), len(tasks))
        self.logger.step_offset += trainer.global_step
        self.progress.step_offset = self.logger.step_offset
        metrics = self.schedule.summary(self.progress.matrices, self.progress.initial.get("correct"), self.progress.initial)
        for logger in (self.logger, *self.user_loggers):  # every task's row, at the fit's last global step
            logger.log_metrics(_row_log(fit, row["correct"], metrics), step=0)
        display.end(fit.index, row["correct"], metrics, self.progress.wall_time_per_task[-1])
        self._commit_boundary()

    def _commit_boundary(self) -> None:
        """The log rows, then the boundary checkpoint with the progress (rank 0; every rank learns
        whether it worked). Only then does the progress count as the run folder's."""
        failure: Optional[Exception] = None
        try:
            self.progress.log_rows = self.logger.flush()
            self.folder.save_boundary(self._state(), self.progress, [f.name for f in self._fits()])
        except Exception as exc:
            failure = exc
        if broadcast_from_rank_zero(failure is not None) and failure is None:
            raise RunFolderError(f"rank 0 could not write the task boundary of {self.run_dir} (its error says why)")
        if failure is not None:
            raise failure
        self.committed = self.progress.snapshot()

    def _fit(self, trainer: L.Trainer, point: Optional[ResumePoint]) -> None:
        strict = self.model.strict_loading
        if point is not None:
            self.model.strict_loading = False  # an epoch checkpoint holds only the state a fit changes (checked)
        try:
            trainer.fit(self.model, datamodule=self.data, ckpt_path=str(point.path) if point else None, weights_only=True)
        except SIGTERMException:  # Lightning's handler, before clight's took over in this fit
            raise RunInterrupted(signal.SIGTERM) from None
        finally:
            self.model.strict_loading = strict

    def _mark(self, status: str, **extra) -> None:
        """Say in the manifest how the run stopped (never hiding the reason it stopped), with the
        progress the run folder holds: a fit whose checkpoint was not written is not counted."""
        assert self.committed is not None, "_train sets it before any fit"
        try:
            self.folder.save_progress(self.committed, status, **extra)
        except OSError:
            pass

    def _continue_command(self) -> str:
        if self.resume_command is not None:
            return self.resume_command
        if self.config is None:
            return "SequenceRunner(..., resume=True)"
        return f"clight fit --config CONFIG --resume {self.run_dir}, CONFIG being the config you started the run with"

    def _interrupted_message(self, exc: RunInterrupted, num_fits: int) -> str:
        assert self.committed is not None, "_train sets it before any fit"
        done = self.committed.finished_fits
        return (
            f"{exc} in fit {done + 1}/{num_fits}. {self.run_dir} keeps the {done} finished fit(s) and the last epoch "
            f"checkpoint of the running one. Continue with: {self._continue_command()}"
        )

    # -- state ------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "methods": {m.state_key: m.state_dict() for m in self.methods},
            "data": self.data.state_dict(),
            "step_offset": self.logger.step_offset,
            "trainable_per_fit": list(self.trainable_per_fit),
        }

    def _restore(self, state: dict) -> None:
        finished = self._fits()[: self.progress.finished_fits]
        load_boundary_state(self.model, self.data, self.methods, finished, state, self.run_dir / BOUNDARY_CHECKPOINT)
        self.logger.step_offset = int(state["step_offset"])
        self.trainable_per_fit = [int(n) for n in state.get("trainable_per_fit", [])]

    def _finish(self) -> RunResult:
        metrics = self.schedule.summary(self.progress.matrices, self.progress.initial.get("correct"), self.progress.initial)
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
        if shards_parameters(self.trainer_kwargs.get("strategy", "auto")):  # DCP checkpoints: one plain copy anyone can load
            export_model(self.model, self.run_dir / "final")
        self.folder.finish(metrics, self.progress)
        return self._result(metrics)

    def _result(self, metrics: dict) -> RunResult:
        matrices = {k: np.array(v) for k, v in self.progress.matrices.items()}
        return RunResult(self.run_dir, np.array(self.progress.matrices["correct"], dtype=float), metrics, matrices)


def _seconds_before(trainer: L.Trainer) -> float:
    """The seconds a fit resumed from an epoch checkpoint had run before it was killed."""
    callbacks = trainer.callbacks  # type: ignore[attr-defined]  # set on every Trainer by Lightning's callback connector, not declared
    return sum(c.seconds_before for c in callbacks if isinstance(c, EpochCheckpoint))


def _accuracy_key(task: int) -> str:
    return f"cl/acc_task_{task}"


def _row_log(fit: Fit, row: list[float], metrics: dict) -> dict:
    log = {_accuracy_key(j): a for j, a in enumerate(row) if not np.isnan(a)}
    log.update({f"cl/{k}": v for k, v in metrics.items() if isinstance(v, float) and not np.isnan(v)})
    log["cl/tasks_finished"] = fit.index + 1
    return log
