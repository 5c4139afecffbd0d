"""Ways to stop a run at an exact point, and a counter of the steps a run trains (tests only)."""

from __future__ import annotations

import os
from typing import Optional

import torch

from clight.methods import ContinualCallback


class SimulatedKill(RuntimeError):
    pass


class StopAt(ContinualCallback):
    """At task ``task``: before (or, ``after_batch``, after) training batch ``batch`` of epoch ``epoch``, before validation
    batch 0 of epoch ``val_epoch``, or when the fit's training loop has ended (``after_training``,
    after its last epoch checkpoint): raise ``SimulatedKill``, or send this process ``signum``
    (SIGKILL ends it there and then; SIGTERM/SIGINT ask the runner to stop). With ``marker``
    (a file path), only the first time: the file is created then, and its presence disarms it."""

    def __init__(
        self,
        task: int,
        epoch: int = -1,
        batch: int = -1,
        val_epoch: int = -1,
        after_training: bool = False,
        signum: Optional[int] = None,
        marker: Optional[str] = None,
        after_batch: bool = False,
    ) -> None:
        self.task, self.epoch, self.batch, self.val_epoch = task, epoch, batch, val_epoch
        self.after_training, self.signum, self.marker, self.after_batch = after_training, signum, marker, after_batch

    def _stop(self) -> None:
        if self.marker is not None:
            if os.path.exists(self.marker):
                return
            open(self.marker, "w").close()
        if self.signum is None:
            raise SimulatedKill("killed")
        os.kill(os.getpid(), self.signum)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if (
            not self.after_batch
            and module.current_task == self.task
            and trainer.current_epoch == self.epoch
            and batch_idx == self.batch
        ):
            self._stop()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if (
            self.after_batch
            and module.current_task == self.task
            and trainer.current_epoch == self.epoch
            and batch_idx == self.batch
        ):
            self._stop()

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        if (
            not trainer.sanity_checking
            and module.current_task == self.task
            and trainer.current_epoch == self.val_epoch
            and batch_idx == 0
        ):
            self._stop()

    def on_train_end(self, trainer, module):
        if self.after_training and module.current_task == self.task:
            self._stop()


class StepCounter(ContinualCallback):
    """Optimizer steps trained per task in this process (nothing kept in checkpoints)."""

    def __init__(self) -> None:
        self.steps: dict[int, int] = {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.steps[module.current_task] = self.steps.get(module.current_task, 0) + 1


class GeneratorStates(ContinualCallback):
    """The state of torch's global generator at every training batch, by (task, epoch, batch)."""

    def __init__(self) -> None:
        self.states: dict[tuple[int, int, int], torch.Tensor] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.states[(module.current_task, trainer.current_epoch, batch_idx)] = torch.get_rng_state()
