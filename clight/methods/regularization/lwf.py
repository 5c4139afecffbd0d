"""Learning without forgetting (Li & Hoiem, 2017)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch.nn import functional as F

from clight.contract import DistillableClassifier, RunContext
from clight.data.task import Task
from clight.methods.base import ContinualCallback


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

    def __init__(self, alpha: float = 1.0, temperature: float = 2.0) -> None:
        if alpha < 0 or temperature <= 0:
            raise ValueError(f"LwF needs alpha >= 0 and temperature > 0, got {alpha}, {temperature}")
        self.alpha, self.temperature = alpha, temperature
        self.previous: Optional[Any] = None
        self._previous_device: Optional[torch.device] = None
        self._pending: Optional[dict] = None
        self.old_tasks: list[int] = []

    def setup_sequence(self, module: Any, datamodule: Any, context: RunContext) -> None:
        module.add_loss_term("lwf", self.penalty)

    def penalty(self, module: Any, batch: dict, outputs: dict) -> torch.Tensor:
        if self.previous is None:
            return outputs["logits"].new_zeros(())
        if self._previous_device != module.device:  # moved once, not walked on every step
            self.previous.to(module.device)
            self._previous_device = module.device
        with torch.no_grad():
            old = self.previous.distillation_logits(self.previous.features(batch["input"], batch.get("task_id")), self.old_tasks)
        new = module.distillation_logits(outputs["features"], self.old_tasks)
        terms = [distillation(n, o, self.temperature) for n, o in zip(new, old)]
        return self.alpha * (terms[0] if len(terms) == 1 else torch.stack(terms).sum())

    def _set_previous(self, model: Any) -> None:
        self.previous, self._previous_device = model, None

    def on_task_start(self, module: Any, task: Task) -> None:
        if self._pending is not None:
            previous = module.frozen_copy()
            previous.load_state_dict(self._pending, strict=False)
            self._set_previous(previous)
            self._pending = None

    def on_task_end(self, module: Any, task: Task) -> None:
        self._pending = None
        self._set_previous(module.frozen_copy())
        self.old_tasks.append(task.index)

    def describe(self) -> dict:
        return {"class": "LwF", "alpha": self.alpha, "temperature": self.temperature, "previous_model": "frozen copy in memory"}

    def state_dict(self) -> dict:
        state: dict = {"old_tasks": self.old_tasks}
        if self.previous is not None:
            state["previous"] = self.previous.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.old_tasks = list(state["old_tasks"])
        if self.previous is not None and "previous" in state:
            self.previous.load_state_dict(state["previous"], strict=False)
        else:
            self._pending = state.get("previous")
