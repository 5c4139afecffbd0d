"""SequenceRunner: train a model on a sequence of tasks, one fresh Trainer per task."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import numpy as np
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar

from clight.data.datamodule import TaskSequence
from clight.evaluation import evaluate_tasks
from clight.io import load_checkpoint, read_json, save_tensors_atomic, write_json_atomic, write_text_atomic
from clight.logger import SequenceCSVLogger
from clight.methods.base import ContinualCallback
from clight.metrics import summarize
from clight.models.module import ContinualModule
from clight.progress import SequenceProgress
from clight.seeding import derive_seed

MANIFEST = "manifest.json"
BOUNDARY_CHECKPOINT = "checkpoints/last_task.pt"
BASELINES = ("sequential", "joint")
EVALUATIONS = ("all", "current")
RESERVED_TRAINER_KEYS = ("callbacks", "logger", "default_root_dir", "use_distributed_sampler")


class RunFolderError(RuntimeError):
    pass


@dataclass
class RunResult:
    run_dir: Path
    accuracy_matrix: np.ndarray
    metrics: dict
    matrices: dict = field(default_factory=dict)


class _KeepBestWeights(Callback):
    """Remembers the weights of the best validation epoch and restores them when the fit ends."""

    def __init__(self, monitor: str) -> None:
        self.monitor, self.best, self.state = monitor, -float("inf"), None

    def on_validation_end(self, trainer, module) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and float(value) > self.best:
            self.best = float(value)
            self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def on_fit_end(self, trainer, module) -> None:
        if self.state is not None:
            module.load_state_dict(self.state)

    # Kept in the epoch checkpoints, so a task resumed mid-way still restores its best epoch.
    def state_dict(self) -> dict:
        return {"best": self.best, "state": self.state}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.state = float(state["best"]), state["state"]


class _EpochSeed(Callback):
    """Reseeds the global generators at every epoch from (seed, task, epoch), so dropout, head
    initialisation and anything else drawn from them repeat exactly after a resume."""

    def __init__(self, seed: int, task: int) -> None:
        self.seed, self.task = seed, task

    def on_train_epoch_start(self, trainer, module) -> None:
        L.seed_everything(derive_seed(self.seed, self.task, trainer.current_epoch) & 0x7FFF_FFFF, verbose=False)


class SequenceRunner:
    """Trains ``model`` on every task of ``data`` in order and records what it remembers.

    For each task: the model's and the methods' ``on_task_start``, a fresh ``Trainer`` built
    from ``trainer`` (fresh early stopping and checkpointing; the methods and the logger are
    shared by all tasks), ``fit``, the ``on_task_end`` hooks, evaluation of every task (row t of
    the accuracy matrix), then an atomic checkpoint and manifest. ``baseline="joint"`` trains
    once on all tasks together. ``max_steps_per_task`` fixes a compute budget in optimizer
    steps. ``select_best`` keeps each task's best epoch by ``monitor`` on the validation split.
    ``evaluate="current"`` scores only the task just trained (new-task accuracy), for sequences
    of hundreds of tasks where the full matrix is not wanted.
    """

    def __init__(
        self,
        model: ContinualModule,
        data: TaskSequence,
        methods: Sequence[ContinualCallback] = (),
        trainer: Optional[dict] = None,
        run_dir: str = "runs/run",
        seed: int = 0,
        baseline: str = "sequential",
        max_steps_per_task: Optional[int] = None,
        early_stopping_patience: Optional[int] = None,
        monitor: str = "val/acc",
        select_best: bool = False,
        checkpoint_every_epoch: bool = True,
        evaluate: str = "all",
        resume: bool = False,
        config: Optional[str] = None,
    ) -> None:
        if evaluate not in EVALUATIONS:
            raise ValueError(f"runner.evaluate must be one of {EVALUATIONS}, got {evaluate!r}")
        if baseline not in BASELINES:
            raise ValueError(f"runner.baseline must be one of {BASELINES}, got {baseline!r}")
        if max_steps_per_task is not None and max_steps_per_task < 1:
            raise ValueError(f"runner.max_steps_per_task must be a positive integer, got {max_steps_per_task}")
        trainer = dict(trainer or {})
        for key in RESERVED_TRAINER_KEYS:
            if trainer.pop(key, None) is not None:
                raise ValueError(f"trainer.{key} is managed by the runner; use `methods` for callbacks that keep state")
        self.model, self.data, self.methods = model, data, list(methods)
        self.trainer_kwargs = trainer
        self.run_dir = Path(run_dir)
        self.seed, self.baseline = seed, baseline
        self.max_steps_per_task = max_steps_per_task
        self.early_stopping_patience, self.monitor, self.select_best = early_stopping_patience, monitor, select_best
        self.checkpoint_every_epoch = checkpoint_every_epoch
        self.evaluate = evaluate
        self.resume, self.config = resume, config
        self.matrices: dict[str, list[list[float]]] = {}
        self.initial: dict[str, list[float]] = {}
        self.wall_times: list[float] = []
        self.finished_tasks = 0
        self.logger: Optional[SequenceCSVLogger] = None

    # -- the run --------------------------------------------------------------------------
    def run(self) -> RunResult:
        quiet_lightning_banners()
        info = self.data.info  # loads the data: a missing or malformed data set fails before the run folder exists
        self._prepare_run_dir()
        L.seed_everything(self.seed, workers=True, verbose=False)
        self.logger = SequenceCSVLogger(str(self.run_dir))
        self.model.setup_sequence(info)
        for method in self.methods:
            method.run_dir = self.run_dir
            method.setup_sequence(self.model, self.data)
        if self.resume and (self.run_dir / MANIFEST).exists():
            self._restore()
        self.logger.log_hyperparams(
            {"model": self.model.describe(), "data": self.data.describe(), "methods": [m.describe() for m in self.methods],
             "runner": {"baseline": self.baseline, "seed": self.seed, "max_steps_per_task": self.max_steps_per_task}}
        )
        progress = SequenceProgress(self.data, enabled=self.trainer_kwargs.get("enable_progress_bar", True))
        if self.baseline == "joint":
            self._run_joint(progress)
        else:
            self._run_sequential(progress)
        return self._finish()

    def _run_sequential(self, progress: SequenceProgress) -> None:
        for t in range(self.finished_tasks, self.data.num_tasks):
            task = self.data.tasks[t]
            self.data.set_task(t)
            L.seed_everything(derive_seed(self.seed, t) & 0x7FFF_FFFF, verbose=False)
            self.model.on_task_start(task)
            for method in self.methods:
                method.on_task_start(self.model, task)
            if t == 0 and not self.initial and self.evaluate == "all":
                self.initial = evaluate_tasks(self.model, self.data)
            progress.start_task(t)
            started = time.perf_counter()
            trainer = self._fit(t, task.name)
            self.model.on_task_end(task)
            for method in self.methods:
                method.on_task_end(self.model, task)
            self.data.on_task_end(t)
            self._record_row(trainer, t, time.perf_counter() - started, progress)

    def _run_joint(self, progress: SequenceProgress) -> None:
        for task in self.data.tasks:
            self.model.on_task_start(task)
            for method in self.methods:
                method.on_task_start(self.model, task)
        self.data.set_joint()
        progress.start_task(0, joint=True)
        started = time.perf_counter()
        trainer = self._fit(0, "joint")
        self._record_row(trainer, 0, time.perf_counter() - started, progress)
        self.finished_tasks = self.data.num_tasks

    def _fit(self, t: int, name: str) -> L.Trainer:
        task_dir = self.run_dir / "checkpoints" / f"task_{t}"
        trainer = self._make_trainer(task_dir, t)
        self.model.train()  # Lightning keeps a module's eval mode when a fit starts
        resume_from = task_dir / "last.ckpt"
        ckpt_path = str(resume_from) if self.resume and resume_from.exists() else None
        trainer.fit(self.model, datamodule=self.data, ckpt_path=ckpt_path, weights_only=True)
        return trainer

    def _make_trainer(self, task_dir: Path, task: int) -> L.Trainer:
        kwargs = copy.deepcopy(self.trainer_kwargs)
        kwargs.setdefault("enable_model_summary", False)
        kwargs.setdefault("log_every_n_steps", 10)
        if self.max_steps_per_task is not None:
            kwargs.update(max_steps=self.max_steps_per_task, max_epochs=-1)
        fresh: list[Callback] = [_EpochSeed(self.seed, task)]
        if self.checkpoint_every_epoch:
            fresh.append(ModelCheckpoint(dirpath=str(task_dir), save_last=True, save_top_k=0, enable_version_counter=False))
        if self.early_stopping_patience is not None:
            fresh.append(EarlyStopping(monitor=self.monitor, mode="max", patience=self.early_stopping_patience))
        if self.select_best:
            fresh.append(_KeepBestWeights(self.monitor))
        if kwargs.get("enable_progress_bar", True):
            # Rich's live display redraws from a thread that competes for the GIL (about 5% of a
            # small model's step); a tqdm bar updated every 10th step costs nothing measurable.
            fresh.append(TQDMProgressBar(refresh_rate=10, leave=False))
        return L.Trainer(
            **kwargs,
            callbacks=[*self.methods, *fresh],
            logger=self.logger,
            default_root_dir=str(self.run_dir),
            use_distributed_sampler=False,
        )

    # -- bookkeeping ------------------------------------------------------------------------
    def _record_row(self, trainer: L.Trainer, t: int, seconds: float, progress: SequenceProgress) -> None:
        only = None if self.evaluate == "all" or self.baseline == "joint" else [t]
        row = evaluate_tasks(self.model, self.data, trainer.strategy, tasks=only)
        for name, values in row.items():
            self.matrices.setdefault(name, []).append(values)
        self.wall_times.append(seconds)
        self.finished_tasks = t + 1
        self.logger.step_offset += trainer.global_step
        metrics = self._summary(np.array(self.matrices["correct"], dtype=float))
        self.logger.log_metrics(self._row_log(t, row["correct"], metrics), step=0)
        self.logger.save()
        progress.end_task(t, row["correct"], metrics, seconds)
        self._save_boundary(trainer)

    def _row_log(self, t: int, row: list[float], metrics: dict) -> dict:
        log = {f"cl/acc_task_{j}": a for j, a in enumerate(row) if not np.isnan(a)}
        log.update({f"cl/{k}": v for k, v in metrics.items() if isinstance(v, float) and not np.isnan(v)})
        log["cl/tasks_finished"] = t + 1
        return log

    def _initial_row(self) -> Optional[list[float]]:
        initial = self.initial.get("correct")
        if initial is None or any(np.isnan(initial[1:])):
            return None
        return initial

    def _summary(self, matrix: np.ndarray) -> dict:
        if self.baseline == "joint":
            return _joint_metrics(matrix)
        if self.evaluate == "current":
            return new_task_metrics(matrix)
        return summarize(matrix, self._initial_row())

    def _save_boundary(self, trainer: L.Trainer) -> None:
        state = {
            "model": self.model.state_dict(),
            "methods": {m.state_key: m.state_dict() for m in self.methods},
            "data": self.data.state_dict(),
            "step_offset": self.logger.step_offset,
        }
        if trainer.is_global_zero:
            save_tensors_atomic(self.run_dir / BOUNDARY_CHECKPOINT, state)
            write_json_atomic(self.run_dir / MANIFEST, self._manifest("running"))
            _remove_tree(self.run_dir / "checkpoints" / f"task_{self.finished_tasks - 1}")
        trainer.strategy.barrier("clight-boundary")

    def _manifest(self, status: str) -> dict:
        return {
            "format": 1,
            "status": status,
            "baseline": self.baseline,
            "evaluate": self.evaluate,
            "num_tasks": self.data.num_tasks,
            "finished_tasks": self.finished_tasks,
            "matrices": self.matrices,
            "initial": self.initial,
            "wall_time_per_task": self.wall_times,
            "step_offset": self.logger.step_offset if self.logger else 0,
        }

    def _restore(self) -> None:
        manifest = read_json(self.run_dir / MANIFEST)
        if manifest.get("num_tasks") != self.data.num_tasks or manifest.get("baseline") != self.baseline:
            raise RunFolderError(
                f"{self.run_dir} holds a run of {manifest.get('num_tasks')} tasks ({manifest.get('baseline')}); "
                f"this config has {self.data.num_tasks} ({self.baseline}). Resume with the config the run was started with."
            )
        self.finished_tasks = int(manifest["finished_tasks"])
        self.matrices, self.initial = manifest["matrices"], manifest["initial"]
        self.wall_times = manifest["wall_time_per_task"]
        if self.finished_tasks == 0:
            return
        for task in self.data.tasks[: self.finished_tasks]:
            self.model.on_task_start(task)
            self.model.on_task_end(task)
        state = load_checkpoint(self.run_dir / BOUNDARY_CHECKPOINT)
        self.model.load_state_dict(state["model"])
        for method in self.methods:
            if method.state_key in state["methods"]:
                method.load_state_dict(state["methods"][method.state_key])
        self.data.load_state_dict(state["data"])
        self.logger.step_offset = int(state["step_offset"])

    def _prepare_run_dir(self) -> None:
        manifest = self.run_dir / MANIFEST
        if manifest.exists() and not self.resume:
            raise RunFolderError(
                f"{self.run_dir} already holds a run. Resume it with --resume {self.run_dir}, "
                "or choose another run_dir."
            )
        if rank_zero_only.rank == 0:
            (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            if self.config is not None and not (self.resume and (self.run_dir / "config.yaml").exists()):
                write_text_atomic(self.run_dir / "config.yaml", self.config)

    def _finish(self) -> RunResult:
        matrix = np.array(self.matrices["correct"], dtype=float)
        metrics = self._summary(matrix)
        metrics.update(
            {
                "baseline": self.baseline,
                "wall_time_seconds": float(sum(self.wall_times)),
                "wall_time_per_task": self.wall_times,
                "initial_accuracy": self.initial.get("correct"),
                "model": self.model.describe(),
                "data": self.data.describe(),
                "methods": [m.describe() for m in self.methods],
            }
        )
        if "correct_task_aware" in self.matrices and self.baseline == "sequential" and self.evaluate == "all":
            metrics["task_aware"] = summarize(self.matrices["correct_task_aware"])
        if rank_zero_only.rank == 0:
            from clight.report import write_report

            write_json_atomic(self.run_dir / "metrics.json", metrics)
            write_json_atomic(self.run_dir / MANIFEST, self._manifest("finished"))
            write_report(self.run_dir)
        return RunResult(self.run_dir, matrix, metrics, {k: np.array(v) for k, v in self.matrices.items()})


def quiet_lightning_banners() -> None:
    """A fresh Trainer per task would repeat Lightning's device banner and tips every task."""
    import logging
    import warnings

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # The runner puts the model in train mode before every fit; modules still in eval mode then
    # are frozen norms kept there on purpose (see ContinualClassifier.train).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


def new_task_metrics(matrix: np.ndarray) -> dict:
    """Metrics of a run that scored only the task just trained (``evaluate="current"``)."""
    diagonal = [float(matrix[k, k]) for k in range(matrix.shape[0])]
    return {
        "tasks_finished": len(diagonal),
        "average_accuracy": None,
        "new_task_accuracy": diagonal,
        "average_new_task_accuracy": float(np.mean(diagonal)),
        "note": "evaluate=current: only the task just trained was scored after each task (new-task accuracy)",
    }


def _joint_metrics(matrix: np.ndarray) -> dict:
    return {
        "tasks_finished": int(matrix.shape[1]),
        "average_accuracy": float(np.nanmean(matrix[-1])),
        "average_incremental_accuracy": None,
        "backward_transfer": None,
        "forgetting": None,
        "forward_transfer": None,
        "note": "joint training: one model trained on all tasks at once; one row of accuracies",
    }


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
