"""ContinualModule: the LightningModule base every clight model derives from."""

from __future__ import annotations

from typing import Callable, Optional

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from clight.data.task import SequenceInfo, Task

LossTerm = Callable[["ContinualModule", dict, dict], torch.Tensor]


def default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


class NonFiniteLossError(FloatingPointError):
    pass


class ContinualModule(L.LightningModule):
    """Owns the network and the loss; knows which task it is on.

    Subclasses implement ``task_loss(batch) -> (loss, outputs)`` and
    ``evaluation_counts(batch) -> {name: summed count}``. Methods add named loss terms with
    ``add_loss_term``; each is logged as ``train/<name>`` beside ``train/task_loss`` and
    ``train/loss`` (``train/task_loss`` only when there are terms). ``on_task_start`` / ``on_task_end`` run between fits (never inside one),
    so the set of trainable parameters is fixed for the whole of every fit.
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.loss_terms: dict[str, LossTerm] = {}
        self.current_task = 0
        self.sequence: Optional[SequenceInfo] = None

    # -- sequence hooks -----------------------------------------------------------------------
    def setup_sequence(self, info: SequenceInfo) -> None:
        """Called once before the first task with what the data module knows of the sequence."""
        self.sequence = info

    def on_task_start(self, task: Task) -> None:
        self.current_task = task.index

    def on_task_end(self, task: Task) -> None:
        pass

    def add_loss_term(self, name: str, term: LossTerm) -> None:
        if name in ("loss", "task_loss"):
            raise ValueError(f"loss term name {name!r} is reserved")
        self.loss_terms[name] = term

    # -- training -----------------------------------------------------------------------------
    def task_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:  # pragma: no cover - interface
        raise NotImplementedError

    def evaluation_counts(self, batch: dict) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, outputs = self.task_loss(batch)
        batch_size = len(next(iter(batch.values())))
        if self.loss_terms:  # without extra terms the task loss is the loss: log it once
            self.log("train/task_loss", loss.detach(), batch_size=batch_size)
        for name, term in self.loss_terms.items():
            value = term(self, batch, outputs)
            self.log(f"train/{name}", value.detach(), batch_size=batch_size)
            loss = loss + value
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss became {loss.item()} at task {self.current_task}, step {self.global_step}. "
                "Lower the learning rate (model.optimizer.init_args.lr), check the inputs for NaN, "
                "or enable gradient clipping (trainer.gradient_clip_val). The run folder keeps the last finished task."
            )
        self.log("train/loss", loss.detach(), batch_size=batch_size, prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        counts = self.evaluation_counts(batch)
        total = counts["total"].float().clamp_min(1)
        self.log("val/acc", counts["correct"].float() / total, batch_size=int(counts["total"]), prog_bar=True, sync_dist=True)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        params = self.trainable_parameters()
        if not params:
            raise ValueError(f"task {self.current_task} has no trainable parameters: check which parts are frozen")
        optimizer = self.optimizer_factory(params)
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler_factory(optimizer)}

    def describe(self) -> dict:
        """Hyper-parameters worth recording in the run folder."""
        trainable = sum(p.numel() for p in self.trainable_parameters())
        total = sum(p.numel() for p in self.parameters())
        return {"class": type(self).__name__, "trainable_parameters": trainable, "parameters": total}
