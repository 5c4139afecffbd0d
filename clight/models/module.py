"""ContinualModule: the LightningModule base every clight model derives from."""

from __future__ import annotations

import copy
from typing import Any, Callable, ClassVar, Optional

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics.aggregation import MeanMetric

from clight.choices import SETTINGS
from clight.contract import ConfigError
from clight.data.task import SequenceInfo, Task
from clight.lightning_internals import CURRENT_HOOK_ATTRIBUTE, attached_trainer, logger_writes_this_step
from clight.models.finite import FiniteLossCheck, NonFiniteLossError
from clight.models.sharding import ShardingRecord, reshard, shard_for_fit, transformer_blocks

__all__ = ["ContinualModule", "NonFiniteLossError", "default_optimizer"]

LossTerm = Callable[["ContinualModule", dict, dict], torch.Tensor]


def default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


class ContinualModule(L.LightningModule):
    """Owns the network and the loss; knows which task it is on.

    What every model offers (``docs/contract.md``):

    - ``task_loss(batch) -> (loss, outputs)``; ``outputs`` holds at least ``logits`` (and a
      classifier's ``features``), which loss terms may reuse;
    - ``evaluation_counts(batch) -> {name: summed count}``, with ``correct`` and ``total``;
    - ``features(x, task_id=None)``: the representation the heads read (``x`` is what
      ``model_input(batch)`` returns), through task ``task_id``'s parameters where a model keeps
      parameters per task;
    - ``output_logits(batch)``: per-sample output logits without labels;
    - ``can_evaluate(task_id)``: whether the model can score a task yet;
    - ``frozen_copy()``: an independent copy with nothing trainable, in eval mode;
    - ``settings``: the scenarios the model supports, checked before anything runs.

    Methods add named loss terms with ``add_loss_term``; each is logged as ``train/<name>``
    beside ``train/task_loss`` and ``train/loss`` (``train/task_loss`` only when there are
    terms). Values are handed to Lightning only on the steps its logger writes
    (``trainer.log_every_n_steps``) and on the last step of every epoch and fit, so
    ``metrics.csv`` holds what it would hold if every step were logged, while
    ``trainer.callback_metrics`` and the progress bar show the latest logged step. A non-finite
    loss stops the run (``NonFiniteLossError``): at once on the CPU; on an accelerator at the
    next logged step, epoch end or checkpoint, so the device is not waited for on every step
    (``check_finite_every_step = True`` checks every step there too).
    ``on_task_start`` / ``on_task_end`` run between fits (never inside one), so the set of
    trainable parameters is fixed for the whole of every fit.
    """

    settings: ClassVar[tuple[str, ...]] = SETTINGS
    #: why the model supports only ``settings`` (shown when a sequence does not match)
    settings_reason: ClassVar[str] = ""
    #: check the loss for NaN / inf on every step (None: on the CPU only, where it costs nothing)
    check_finite_every_step: Optional[bool] = None
    #: why the model cannot be trained with sharded parameters (None: it can; ``clight.models.sharding``)
    unshardable: ClassVar[Optional[str]] = None

    def __init__(
        self,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.loss_terms: dict[str, LossTerm] = {}
        self.task_loss_replaced_by: Optional[str] = None  # a loss term trained on instead of the task loss
        # a method's classifier used in evaluation instead of the heads (iCaRL's nearest mean of exemplars)
        self.evaluation_scores: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        self.current_task = 0
        self.sequence: Optional[SequenceInfo] = None
        # correct / total summed over every rank before dividing (exact under DDP)
        self.val_accuracy = MeanMetric()
        self._finite = FiniteLossCheck()
        self.sharding = ShardingRecord()

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets this around each of the dozens of hook calls of a step; it is never a
        # parameter, buffer or submodule, so nn.Module's checks for those are skipped.
        if name == CURRENT_HOOK_ATTRIBUTE:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # -- sequence hooks -----------------------------------------------------------------------
    def check_compatible(self, info: SequenceInfo) -> None:
        """Raise ``ConfigError`` when this model cannot run the sequence ``info`` describes."""
        if info.setting not in self.settings:
            raise ConfigError(
                f"{type(self).__name__} supports {list(self.settings)} sequences{self.settings_reason}; the data module "
                f"builds a {info.setting!r} one. Use a scenario with setting: {self.settings[0]}, or another model."
            )

    def setup_sequence(self, info: SequenceInfo) -> None:
        """Called once before the first task with what the data module knows of the sequence."""
        self.check_compatible(info)
        self.sequence = info

    def on_task_start(self, task: Task) -> None:
        self.current_task = task.index

    def on_task_end(self, task: Task) -> None:
        pass

    def add_loss_term(self, name: str, term: LossTerm) -> None:
        if name in ("loss", "task_loss"):
            raise ValueError(f"loss term name {name!r} is reserved")
        self.loss_terms[name] = term

    def replace_task_loss(self, name: str, term: LossTerm) -> None:
        """Train on the loss term ``name`` instead of the task loss (iCaRL's sigmoid loss replaces
        the cross-entropy). ``task_loss`` still runs, for the outputs the terms read, and is still
        logged as ``train/task_loss``, but it adds nothing to the loss."""
        if self.task_loss_replaced_by not in (None, name):
            raise ValueError(
                f"the task loss is already replaced by {self.task_loss_replaced_by!r}; {name!r} cannot replace it too"
            )
        self.add_loss_term(name, term)
        self.task_loss_replaced_by = name

    # -- what methods may call ------------------------------------------------------------------
    def task_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:  # pragma: no cover - interface
        raise NotImplementedError

    def evaluation_counts(self, batch: dict) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def model_input(self, batch: dict) -> Any:
        """The part of a batch that ``features`` takes."""
        return batch["input"]

    def features(self, x: Any, task_id: Optional[torch.Tensor] = None) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError(f"{type(self).__name__} does not expose features")

    def output_logits(self, batch: dict) -> torch.Tensor:
        """Per-sample output logits ``[B, C]``, no labels needed (default: ``task_loss``'s logits)."""
        return self.task_loss(batch)[1]["logits"]

    def can_evaluate(self, task_id: int) -> bool:
        return True

    def frozen_copy(self) -> "ContinualModule":
        """A deep copy with no gradients, in eval mode, detached from the Trainer and from what
        methods attached (loss terms, evaluation scores: they belong to the methods)."""
        memo: dict[int, Any] = {id(self.loss_terms): {}, id(self.evaluation_scores): None}
        if (trainer := attached_trainer(self)) is not None:
            memo[id(trainer)] = None
        copied = copy.deepcopy(self, memo)
        copied.requires_grad_(False)
        return copied.eval()

    # -- training -----------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        task_loss, outputs = self.task_loss(batch)
        loss, terms = (task_loss if self.task_loss_replaced_by is None else None), {}
        for name, term in self.loss_terms.items():
            terms[name] = term(self, batch, outputs)
            loss = terms[name] if loss is None else loss + terms[name]
        assert loss is not None, "a term that replaces the task loss is one of loss_terms"
        step = self.global_step
        logged = self._logs_this_step(step)
        self._finite.observe(loss, self.current_task, step, due=logged, every_step=self.check_finite_every_step)
        if logged:
            batch_size = len(next(iter(batch.values())))
            if terms:  # without extra terms the task loss is the loss: log it once
                self.log("train/task_loss", task_loss.detach(), batch_size=batch_size)
            for name, value in terms.items():
                self.log(f"train/{name}", value.detach(), batch_size=batch_size)
            self.log("train/loss", loss.detach(), batch_size=batch_size, prog_bar=True)
        return loss

    def _logs_this_step(self, step: int) -> bool:
        """Whether Lightning's logger writes this step's metrics, or it ends the epoch or the fit.
        A ``self.log`` call costs about a tenth of a small model's step, and what is handed over
        on the steps in between is never written."""
        trainer = attached_trainer(self)
        if trainer is None:
            return False
        return logger_writes_this_step(trainer) or trainer.is_last_batch or 0 < trainer.max_steps <= step + 1

    # Non-finite losses not yet read back from an accelerator are checked before anything is saved.
    def on_train_epoch_end(self) -> None:
        self._finite.check()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self._finite.check()

    def on_train_end(self) -> None:
        self._finite.check()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        counts = self.evaluation_counts(batch)
        total = counts["total"].float()
        if total > 0:
            self.val_accuracy.update(counts["correct"].float() / total, weight=total)

    def on_validation_epoch_end(self) -> None:
        # logged once per epoch, not once per batch: Lightning reads a logged metric only at the epoch's end
        self.log("val/acc", self.val_accuracy, on_step=False, on_epoch=True, prog_bar=True)

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

    # -- sharding (trainer.strategy: sharded) ----------------------------------------------------
    def configure_model(self) -> None:
        """Under a sharded strategy, FSDP2 on the first fit and on what later tasks add only
        (``clight.models.sharding``); nothing under any other strategy."""
        shard_for_fit(self, self.sharding)

    def on_fit_end(self) -> None:
        reshard(self)  # a sharded model leaves every fit as its shards

    def shard_units(self) -> list[torch.nn.Module]:
        """The blocks sharded one by one before the rest (default: Hugging Face transformer blocks)."""
        return transformer_blocks(self)

    def describe(self) -> dict:
        """Hyper-parameters worth recording in the run folder."""
        trainable = sum(p.numel() for p in self.trainable_parameters())
        total = sum(p.numel() for p in self.parameters())
        return {"class": type(self).__name__, "trainable_parameters": trainable, "parameters": total}
