"""ContinualCallback: the base of every method that acts across tasks."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback

from clight.data.task import Task


class ContinualCallback(Callback):
    """A Lightning callback that lives for the whole run, not one fit.

    The runner creates it once and passes it to every task's Trainer, so its attributes carry
    over from task to task. Besides Lightning's hooks it gets ``on_task_start`` and
    ``on_task_end`` (between fits: the place to add loss terms, snapshot weights or rebuild
    state) and ``describe`` (its hyper-parameters and the variant that ran, written to the run
    folder). State that must survive a resume goes in ``state_dict`` / ``load_state_dict`` as
    tensors and plain Python values (checkpoints are loaded with ``weights_only=True``).
    Anything that edits parameters must make the same edit on every rank.
    """

    def setup_sequence(self, module: Any, datamodule: Any) -> None:
        """Once, before the first task (after the model saw the sequence)."""

    def on_task_start(self, module: Any, task: Task) -> None:
        """Before task ``task`` is trained (after the model's own ``on_task_start``)."""

    def on_task_end(self, module: Any, task: Task) -> None:
        """After task ``task`` is trained, before the accuracy row is evaluated."""

    def describe(self) -> dict:
        return {"class": type(self).__name__}

    @property
    def state_key(self) -> str:
        return type(self).__name__
