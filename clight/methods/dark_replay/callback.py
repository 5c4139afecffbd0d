"""Dark experience replay, DER++ (Buzzega, Boschini, Porrello, Abati & Calderara, NeurIPS 2020)."""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
from lightning.fabric.utilities import move_data_to_device

from clight.choices import check_choice
from clight.contract import LabelFreeOutputs, RunContext
from clight.data.samplers import memory_batch
from clight.distributed import global_rank, world_size
from clight.methods.base import ContinualCallback
from clight.methods.dark_replay.buffer import LogitReservoir

SALT = 0xDE2  # the run-seed salt of everything DER++ draws
ReplayBatches = Literal["two", "one"]


def logit_mse(current: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over the logits that exist on both sides: a single head masks the
    classes it had not seen (-inf) when the logits were stored."""
    keep = torch.isfinite(current) & torch.isfinite(stored)
    difference = torch.where(keep, current - stored, torch.zeros_like(current))
    return difference.pow(2).sum() / keep.sum().clamp_min(1)


class DERpp(ContinualCallback):
    """DER++: replay of past samples with the logits the model gave them and with their labels.

    Every training sample is offered to a reservoir memory of ``capacity`` samples together with
    the logits of the step that saw it (before that step's update). Loss on every batch once the
    memory holds anything: the task loss, plus ``alpha * MSE(logits now, stored logits)`` on one
    memory batch and ``beta * CE(labels)`` on a second, independently drawn memory batch, each of
    ``batch_size`` samples (``replay_batches="two"``, the paper and its authors' code);
    ``replay_batches="one"`` computes both terms on one memory batch and one forward pass
    (Avalanche's variant). ``beta = 0`` is DER. Logged as ``train/derpp_logits``, ``train/derpp_labels``.
    The defaults alpha 0.1, beta 0.5 are the paper's choice for Seq-CIFAR-10 with 200 samples (it
    tunes them per benchmark).
    """

    state_layout = {"seen": "replicated", "fields": "replicated", "generator": "replicated"}
    unshardable = "not yet tested with sharded parameters (docs/scaling.md lists the methods that are)"

    module_protocol = LabelFreeOutputs

    def __init__(
        self,
        capacity: int = 200,
        alpha: float = 0.1,
        beta: float = 0.5,
        batch_size: int = 32,
        replay_batches: ReplayBatches = "two",
    ) -> None:
        check_choice("DERpp.replay_batches", replay_batches, ReplayBatches)
        if alpha < 0 or beta < 0 or batch_size < 1:
            raise ValueError(f"DERpp needs alpha >= 0, beta >= 0 and batch_size >= 1, got {alpha}, {beta}, {batch_size}")
        self.capacity, self.alpha, self.beta, self.batch_size, self.replay_batches = (
            capacity,
            alpha,
            beta,
            batch_size,
            replay_batches,
        )
        self.buffer = LogitReservoir(capacity)
        self._generator: Optional[torch.Generator] = None
        self._seen_batch: Optional[tuple[dict, torch.Tensor]] = None
        self._shared: Optional[torch.Tensor] = None  # the label loss of the one memory batch (replay_batches="one")

    def setup_sequence(self, module: Any, datamodule: Any, context: RunContext) -> None:
        self._generator = context.generator(SALT)
        module.add_loss_term("derpp_logits", self.logit_term)
        module.add_loss_term("derpp_labels", self.label_term)

    def _memory_batch(self, module: Any) -> dict:
        rows = memory_batch(len(self.buffer), self.batch_size, self._generator, global_rank(), world_size())
        return move_data_to_device(self.buffer.batch(rows), module.device)

    def _replaying(self) -> bool:
        """Whether the memory can give every rank a share of a batch (it starts empty)."""
        return len(self.buffer) >= world_size()

    def logit_term(self, module: Any, batch: dict, outputs: dict) -> torch.Tensor:
        self._seen_batch = (batch, outputs["logits"].detach())  # joins the memory after this step
        if not self._replaying():
            return outputs["logits"].new_zeros(())
        memory = self._memory_batch(module)
        stored = memory.pop("logits")
        label_loss, memory_outputs = module.task_loss(memory)  # the logits the stored ones came from
        if self.replay_batches == "one":
            self._shared = label_loss  # the label term reuses this batch and its forward pass
        return self.alpha * logit_mse(memory_outputs["logits"], stored)

    def label_term(self, module: Any, batch: dict, outputs: dict) -> torch.Tensor:
        if not self._replaying():
            return outputs["logits"].new_zeros(())
        label_loss, self._shared = self._shared, None
        if label_loss is None:
            memory = self._memory_batch(module)
            memory.pop("logits")
            label_loss = module.task_loss(memory)[0]
        return self.beta * label_loss

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._seen_batch is not None:
            seen, logits = self._seen_batch
            self.buffer.add(seen, logits, self._generator)
            self._seen_batch = None

    def describe(self) -> dict:
        return {
            "class": "DERpp",
            "capacity": self.capacity,
            "alpha": self.alpha,
            "beta": self.beta,
            "batch_size": self.batch_size,
            "replay_batches": self.replay_batches,
            "memory": "reservoir over the training stream; inputs, labels and the logits of the step that saw them",
            "samples_seen": self.buffer.seen,
        }

    def state_dict(self) -> dict:
        state = self.buffer.state_dict()
        if self._generator is not None:
            state["generator"] = self._generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state)
        if "generator" in state and self._generator is not None:
            self._generator.set_state(state["generator"])
