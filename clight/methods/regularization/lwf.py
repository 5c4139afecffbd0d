"""Learning without forgetting (Li & Hoiem, 2017)."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from clight.contract import DistillableClassifier, RunContext
from clight.data.task import Task
from clight.methods.base import ContinualCallback
from clight.methods.previous_model import PreviousModel


def distillation(new_logits: torch.Tensor, old_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's knowledge distillation: ``T^2 * KL(softmax(old/T) || softmax(new/T))``, batch mean."""
    old = F.log_softmax(old_logits / temperature, dim=1)
    new = F.log_softmax(new_logits / temperature, dim=1)
    return temperature**2 * F.kl_div(new, old, log_target=True, reduction="batchmean")


class LwF(ContinualCallback):
    """Learning without forgetting: distil the previous model's outputs on the current inputs.

    The model's ``distillation_logits`` groups the outputs of the earlier tasks as its heads
    do: each earlier task's head on its own (task-incremental), or one group over the classes
    of all earlier tasks (single head). The previous model is a ``frozen_copy`` taken at each
    task's end (held outside the module, so it is never trained and never part of DDP's
    parameters). ``temperature`` 2 follows the paper.
    """

    module_protocol = DistillableClassifier

    state_layout = {"old_tasks": "replicated", "previous": "sharded"}
    unshardable = "it keeps a deep copy of the whole model (the previous task's), which clight does not shard"

    def __init__(self, alpha: float = 1.0, temperature: float = 2.0) -> None:
        if alpha < 0 or temperature <= 0:
            raise ValueError(f"LwF needs alpha >= 0 and temperature > 0, got {alpha}, {temperature}")
        self.alpha, self.temperature = alpha, temperature
        self.previous = PreviousModel()
        self.old_tasks: list[int] = []

    def setup_sequence(self, module: Any, datamodule: Any, context: RunContext) -> None:
        module.add_loss_term("lwf", self.penalty)

    def penalty(self, module: Any, batch: dict, outputs: dict) -> torch.Tensor:
        if self.previous.model is None:
            return outputs["logits"].new_zeros(())
        previous = self.previous.on(module.device)
        with torch.no_grad():
            old = previous.distillation_logits(previous.features(batch["input"], batch.get("task_id")), self.old_tasks)
        new = module.distillation_logits(outputs["features"], self.old_tasks)
        terms = [distillation(n, o, self.temperature) for n, o in zip(new, old)]
        return self.alpha * (terms[0] if len(terms) == 1 else torch.stack(terms).sum())

    def on_task_start(self, module: Any, task: Task) -> None:
        self.previous.on_task_start(module)

    def on_task_end(self, module: Any, task: Task) -> None:
        self.previous.take(module)
        self.old_tasks.append(task.index)

    def describe(self) -> dict:
        return {"class": "LwF", "alpha": self.alpha, "temperature": self.temperature, "previous_model": "frozen copy in memory"}

    def state_dict(self) -> dict:
        return {"old_tasks": self.old_tasks, **self.previous.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.old_tasks = list(state["old_tasks"])
        self.previous.load_state_dict(state)
