"""One fit of the sequence: a fresh Trainer with the per-fit callbacks (reseeding, epoch
checkpoints, stopping on a signal, early stopping, best-epoch weights, the batch progress bar)."""

from __future__ import annotations

import copy
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, TQDMProgressBar

from clight.choices import check_choice
from clight.distributed import world_size
from clight.lightning_internals import skip_unused_batch_hooks
from clight.runner.checkpoints import EpochCheckpoint, write_checkpoints_in_place
from clight.runner.interrupt import StopOnSignal, StopRequest
from clight.runner.schedule import Baseline, Evaluation, Schedule, make_schedule
from clight.runner.sharding import fit_strategy
from clight.seeding import reseed_globals

RESERVED_TRAINER_KEYS = ("default_root_dir", "use_distributed_sampler")
#: clight's trainer.log_every_n_steps when the config gives none
LOG_EVERY_N_STEPS = 10


def _quiet_default_logging_interval() -> None:
    """Lightning warns when a task has fewer batches than log_every_n_steps; with clight's default
    (not the user's choice) that is every small task of every run. Steps are still logged every
    10th optimizer step (counted across epochs, so a short task is no exception) and every
    epoch's metrics at its end."""
    warnings.filterwarnings(
        "ignore",
        message=rf"The number of training batches \(\d+\) is smaller than the logging interval Trainer\(log_every_n_steps={LOG_EVERY_N_STEPS}\)",
        module=r"lightning\.pytorch\.loops\.fit_loop",
    )


@dataclass
class RunnerSettings:
    """How every task is trained and scored (the ``runner`` section of a config).

    Args:
        baseline: ``sequential`` (task after task) or ``joint`` (all tasks at once, one fit: the
            upper bound a continual method is compared with).
        evaluate: ``all`` (every task after every task: the accuracy matrix) or ``current`` (only
            the task just trained, for sequences of hundreds of tasks).
        max_steps_per_task: a compute budget in optimizer steps per task (overrides
            trainer.max_epochs); null: the trainer's limits.
        early_stopping_patience: stop a task's fit after this many validation checks without a
            better ``monitor``; null: no early stopping.
        monitor: the validation metric early stopping and select_best watch (higher is better).
        select_best: restore the weights of the best validation epoch when a task's fit ends.
        checkpoint_every_epoch: keep a checkpoint after every epoch of the running task, so a
            killed run resumes from its last epoch (not only from its last finished task).
        epoch_checkpoint_min_s: skip an epoch's checkpoint while the fit has trained for less than
            this many seconds since it started or since its last checkpoint: a kill then costs at
            most that much training again, and a sequence of short tasks does not write a
            checkpoint every few hundred milliseconds (each task still ends with its boundary
            checkpoint). 0: after every epoch.
        check_rank_consistency: compare every rank's parameters and methods' state after every
            task and stop on any difference (clight.rank_check; it costs a pass over the model).
    """

    baseline: Baseline = "sequential"
    evaluate: Evaluation = "all"
    max_steps_per_task: Optional[int] = None
    early_stopping_patience: Optional[int] = None
    monitor: str = "val/acc"
    select_best: bool = False
    checkpoint_every_epoch: bool = True
    epoch_checkpoint_min_s: float = 10.0
    check_rank_consistency: bool = False

    def __post_init__(self) -> None:
        check_choice("runner.baseline", self.baseline, Baseline)
        check_choice("runner.evaluate", self.evaluate, Evaluation)
        if self.max_steps_per_task is not None and self.max_steps_per_task < 1:
            raise ValueError(f"runner.max_steps_per_task must be a positive integer, got {self.max_steps_per_task}")
        if not self.epoch_checkpoint_min_s >= 0:
            raise ValueError(f"runner.epoch_checkpoint_min_s must be 0 or more seconds, got {self.epoch_checkpoint_min_s}")

    def schedule(self) -> Schedule:
        return make_schedule(self.baseline, self.evaluate)


class KeepBestWeights(Callback):
    """Remembers the trainable parameters and the buffers of the best validation epoch and
    restores them when the fit ends (frozen parameters cannot change, so they are not copied)."""

    def __init__(self, monitor: str) -> None:
        self.monitor, self.best = monitor, -float("inf")
        self.state: Optional[dict[str, torch.Tensor]] = None

    @staticmethod
    def _changing_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {k: p for k, p in module.named_parameters() if p.requires_grad}
        state.update(module.named_buffers())
        return state

    def on_validation_end(self, trainer, module) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and float(value) > self.best:
            self.best = float(value)
            self.state = {k: v.detach().clone() for k, v in self._changing_state(module).items()}

    def on_fit_end(self, trainer, module) -> None:
        if self.state is not None:
            module.load_state_dict(self.state, strict=False)

    # Kept in the epoch checkpoints, so a task resumed mid-way still restores its best epoch.
    def state_dict(self) -> dict:
        return {"best": self.best, "state": self.state}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.state = float(state["best"]), state["state"]


class EpochSeed(Callback):
    """Reseeds the global generators at every epoch from (seed, fit, epoch), so dropout, head
    initialisation and anything else drawn from them repeat exactly after a resume."""

    def __init__(self, seed: int, fit_index: int) -> None:
        self.seed, self.fit_index = seed, fit_index

    def on_train_epoch_start(self, trainer, module) -> None:
        reseed_globals(self.seed, self.fit_index, trainer.current_epoch)


def check_trainer_kwargs(trainer: dict) -> dict:
    trainer = dict(trainer)
    for key in RESERVED_TRAINER_KEYS:
        if trainer.pop(key, None) is not None:
            raise ValueError(f"trainer.{key} is managed by the runner (the run folder); leave it out")
    return trainer


def make_trainer(
    trainer_kwargs: dict,
    settings: RunnerSettings,
    methods: Sequence[Callback],
    loggers: Sequence[Any],
    run_dir: Path,
    checkpoint_dir: Path,
    seed: int,
    fit_index: int,
    stop: StopRequest,
) -> L.Trainer:
    """A fresh Trainer for one fit: the run's methods, loggers (clight's CSV first) and the user's
    callbacks (``methods``), fresh per-fit callbacks."""
    kwargs = copy.deepcopy(trainer_kwargs)
    if "strategy" in kwargs:
        kwargs["strategy"] = fit_strategy(kwargs["strategy"], world_size())
    kwargs.setdefault("enable_model_summary", False)
    if fit_index > 0:  # the first fit's sanity check has tried the validation code; each later one cost ~12 ms a task
        kwargs.setdefault("num_sanity_val_steps", 0)
    if "log_every_n_steps" not in kwargs:
        kwargs["log_every_n_steps"] = LOG_EVERY_N_STEPS
        _quiet_default_logging_interval()
    if settings.max_steps_per_task is not None:
        kwargs.update(max_steps=settings.max_steps_per_task, max_epochs=-1)
    kwargs["enable_checkpointing"] = settings.checkpoint_every_epoch and kwargs.get("enable_checkpointing", True) is not False
    fresh: list[Callback] = [EpochSeed(seed, fit_index), StopOnSignal(stop)]
    if kwargs["enable_checkpointing"]:
        fresh.append(EpochCheckpoint(checkpoint_dir, settings.epoch_checkpoint_min_s))
    if settings.early_stopping_patience is not None:
        fresh.append(EarlyStopping(monitor=settings.monitor, mode="max", patience=settings.early_stopping_patience))
    if settings.select_best:
        fresh.append(KeepBestWeights(settings.monitor))
    if kwargs.get("enable_progress_bar", True) and not sys.stdout.isatty():
        kwargs["enable_progress_bar"] = False  # redraws in a log file: the runner prints a line per task instead
    if kwargs.get("enable_progress_bar", True):
        # Rich's live display redraws from a thread that competes for the GIL (about 5% of a
        # small model's step); a tqdm bar updated every 10th step costs nothing measurable.
        fresh.append(TQDMProgressBar(refresh_rate=10, leave=False))
    callbacks = [*methods, *fresh]
    for callback in callbacks:
        skip_unused_batch_hooks(callback)
    trainer = L.Trainer(
        **kwargs, callbacks=callbacks, logger=list(loggers), default_root_dir=str(run_dir), use_distributed_sampler=False
    )
    write_checkpoints_in_place(trainer)
    return trainer
