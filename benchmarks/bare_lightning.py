"""The fine-tuning arm of ``handwritten_cl.py`` written as the smallest Lightning program: a third
arm of ``overhead.py`` that separates what Lightning's loop costs from what clight adds to it
(``train_plasticity``: the same for a task of ``handwritten_plasticity.py``).

The same tasks, model, masking, optimizer and batch order as the hand-written loop; a fresh
``Trainer`` per task with every optional feature off (no logger, no checkpoints, no progress bar,
no model summary) and batches served from tensors already in memory, without a DataLoader.
"""

from __future__ import annotations

import logging

import handwritten_cl as hand
import lightning as L
import torch
from torch.nn import functional as F


class MaskedMLP(L.LightningModule):
    def __init__(self, model: torch.nn.Module, seen: torch.Tensor, lr: float) -> None:
        super().__init__()
        self.model, self.seen, self.lr = model, seen, lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.model(x).masked_fill(~self.seen, float("-inf")), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=0.9)


class InMemoryBatches:
    """The task's batches in the hand-written loop's order (an iterable with a length)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, order: torch.Tensor, batch_size: int, steps: int) -> None:
        self.x, self.y, self.order, self.batch_size, self.steps = x, y, order, batch_size, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for b in range(self.steps):
            index = self.order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.x[index], self.y[index]


class StepStarts(L.Callback):
    def __init__(self, starts: list[float]) -> None:
        self.starts = starts

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.starts.append(hand.clock())


def bare_trainer(**kwargs) -> L.Trainer:
    """A Trainer with every optional feature off (no logger, checkpoints, progress bar or summary)."""
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def run(tasks: list[dict], hidden: list[int], batch_size: int = 64, lr: float = 0.01, max_steps: int = 0) -> dict:
    """Fine-tune on every task in turn with Lightning; the same timings as ``handwritten_cl.run``."""
    model = hand.make_model(hidden)
    seen = torch.zeros(10, dtype=torch.bool)
    starts, train_s, eval_s, rows = [], 0.0, 0.0, []
    g = torch.Generator().manual_seed(1)
    for task in tasks:
        seen[task["classes"]] = True
        order = torch.randperm(len(task["y"]), generator=g)
        steps = hand.steps_per_task(len(order), batch_size, max_steps)
        trainer = bare_trainer(max_epochs=1, callbacks=[StepStarts(starts)])
        began = hand.clock()
        trainer.fit(MaskedMLP(model, seen, lr), train_dataloaders=InMemoryBatches(task["x"], task["y"], order, batch_size, steps))
        train_s += hand.clock() - began
        began = hand.clock()
        model.eval()
        rows.append(hand.accuracy_row(model, tasks, seen))
        eval_s += hand.clock() - began
    return {"rows": rows, "starts": starts, "train_s": train_s, "between_tasks_s": 0.0, "eval_s": eval_s}


class PlasticityMLP(L.LightningModule):
    def __init__(self, model: torch.nn.Module, lr: float, losses: list) -> None:
        super().__init__()
        self.model, self.lr, self.losses = model, lr, losses

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        if batch_idx % 10 == 0:
            self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=self.lr)


class ShuffledBatches:
    """Every epoch, full batches in a fresh random order (the hand-written plasticity loop's)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, g: torch.Generator) -> None:
        self.x, self.y, self.batch_size, self.g = x, y, batch_size, g

    def __len__(self) -> int:
        return len(self.y) // self.batch_size

    def __iter__(self):
        order = torch.randperm(len(self.y), generator=self.g)
        for b in range(len(self)):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.x[index], self.y[index]


class AfterEpoch(L.Callback):
    def __init__(self, fn) -> None:
        self.fn = fn

    def on_train_epoch_end(self, trainer, module) -> None:
        module.eval()
        self.fn()
        module.train()


def train_plasticity(model, x, y, epochs: int, batch_size: int, lr: float, g, after_epoch, losses: list) -> None:
    """``handwritten_plasticity.train_by_hand`` as the smallest Lightning program (a fresh Trainer)."""
    trainer = bare_trainer(max_epochs=epochs, gradient_clip_val=20.0, callbacks=[AfterEpoch(after_epoch)])
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no device lines for each of 100 tasks
    model.train()
    trainer.fit(PlasticityMLP(model, lr, losses), train_dataloaders=ShuffledBatches(x, y, batch_size, g))
    model.eval()
