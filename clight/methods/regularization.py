"""Regularisation baselines: EWC (Kirkpatrick et al., 2017) and LwF (Li & Hoiem, 2017).

Both add a named loss term to the module (logged as ``train/ewc`` / ``train/lwf``) and keep
their state (anchors, Fisher, the previous model) in checkpoints. Both compute their state from
the whole of a task's data, identically on every rank, so no communication is needed.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch.nn import functional as F

from clight.data.task import Task
from clight.methods.base import ContinualCallback


class EWC(ContinualCallback):
    """Elastic weight consolidation with a diagonal empirical Fisher.

    After each task: ``F_t[i] = mean over samples of (d loss / d theta_i)^2`` over the first
    ``fisher_samples`` training samples of the task (one sample per backward pass, the module's
    own task loss). ``mode="online"`` (default) keeps ``F = gamma * F + F_t`` and one anchor (the
    weights after the last task), as online EWC does; ``mode="separate"`` keeps one anchor and
    Fisher per task as the original paper does (memory grows with the tasks).
    Penalty: ``lambda_ / 2 * sum_i F[i] (theta_i - anchor_i)^2``.
    """

    def __init__(self, lambda_: float = 100.0, fisher_samples: int = 200, mode: str = "online", gamma: float = 1.0) -> None:
        if mode not in ("online", "separate"):
            raise ValueError(f"EWC.mode must be 'online' or 'separate', got {mode!r}")
        if lambda_ < 0 or fisher_samples < 1:
            raise ValueError(f"EWC needs lambda_ >= 0 and fisher_samples >= 1, got {lambda_}, {fisher_samples}")
        self.lambda_, self.fisher_samples, self.mode, self.gamma = lambda_, fisher_samples, mode, gamma
        self.anchors: list[dict[str, torch.Tensor]] = []
        self.fishers: list[dict[str, torch.Tensor]] = []
        self.datamodule: Any = None

    def setup_sequence(self, module: Any, datamodule: Any) -> None:
        self.datamodule = datamodule
        module.add_loss_term("ewc", self.penalty)

    def penalty(self, module: Any, batch: dict, outputs: dict) -> torch.Tensor:
        params = dict(module.named_parameters())
        total = next(iter(params.values())).new_zeros(())
        for anchor, fisher in zip(self.anchors, self.fishers):
            for name, f in fisher.items():
                if name in params and params[name].requires_grad:
                    diff = params[name] - anchor[name].to(params[name].device)
                    total = total + (f.to(diff.device) * diff.pow(2)).sum()
        return 0.5 * self.lambda_ * total

    def on_task_end(self, module: Any, task: Task) -> None:
        fisher = self._fisher(module, task)
        anchor = {k: v.detach().clone() for k, v in module.named_parameters() if k in fisher}
        if self.mode == "online" and self.fishers:
            previous = self.fishers[0]
            fisher = {k: self.gamma * previous.get(k, torch.zeros_like(v)) + v for k, v in fisher.items()}
            self.anchors, self.fishers = [anchor], [fisher]
        else:
            self.anchors.append(anchor)
            self.fishers.append(fisher)

    def _fisher(self, module: Any, task: Task) -> dict[str, torch.Tensor]:
        params = {k: p for k, p in module.named_parameters() if p.requires_grad}
        fisher = {k: torch.zeros_like(p) for k, p in params.items()}
        n = min(self.fisher_samples, len(task.train))
        was_training = module.training
        module.eval()
        for i in range(n):
            sample = task.train.__getitems__([i]) if hasattr(task.train, "__getitems__") else _one(task.train[i])
            batch = {k: v.to(module.device) if torch.is_tensor(v) else v for k, v in sample.items()}
            module.zero_grad(set_to_none=True)
            loss, _ = module.task_loss(batch)
            loss.backward()
            for k, p in params.items():
                if p.grad is not None:
                    fisher[k] += p.grad.detach().pow(2) / n
        module.zero_grad(set_to_none=True)
        module.train(was_training)
        return fisher

    def describe(self) -> dict:
        return {"class": "EWC", "lambda": self.lambda_, "fisher_samples": self.fisher_samples, "mode": self.mode, "gamma": self.gamma,
                "fisher": "diagonal empirical Fisher, one sample per backward pass"}

    def state_dict(self) -> dict:
        return {"anchors": self.anchors, "fishers": self.fishers}

    def load_state_dict(self, state: dict) -> None:
        self.anchors, self.fishers = list(state["anchors"]), list(state["fishers"])


def _one(sample: dict) -> dict:
    return {k: v.unsqueeze(0) if torch.is_tensor(v) else v for k, v in sample.items()}


def distillation(new_logits: torch.Tensor, old_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's knowledge distillation: ``T^2 * KL(softmax(old/T) || softmax(new/T))``, batch mean."""
    old = F.log_softmax(old_logits / temperature, dim=1)
    new = F.log_softmax(new_logits / temperature, dim=1)
    return temperature**2 * F.kl_div(new, old, log_target=True, reduction="batchmean")


class LwF(ContinualCallback):
    """Learning without forgetting: distil the previous model's outputs on the current inputs.

    For a ``ContinualClassifier``. Class/domain-incremental: the single head's outputs for the
    classes seen before the current task. Task-incremental: every earlier task's head, each
    distilled on its own. The previous model is a frozen copy taken at each task's end (held
    outside the module, so it is never trained and never part of DDP's parameters).
    """

    def __init__(self, alpha: float = 1.0, temperature: float = 2.0) -> None:
        if alpha < 0 or temperature <= 0:
            raise ValueError(f"LwF needs alpha >= 0 and temperature > 0, got {alpha}, {temperature}")
        self.alpha, self.temperature = alpha, temperature
        self.previous: Optional[Any] = None
        self._pending: Optional[dict] = None
        self.old_classes: list[int] = []
        self.old_tasks: list[int] = []

    def setup_sequence(self, module: Any, datamodule: Any) -> None:
        module.add_loss_term("lwf", self.penalty)

    def penalty(self, module: Any, batch: dict, outputs: dict) -> torch.Tensor:
        if self.previous is None:
            return outputs["logits"].new_zeros(())
        self.previous.to(module.device)
        with torch.no_grad():
            old_features = self.previous.features(batch["input"])
        features = outputs["features"]
        if module.multi_head:
            terms = [
                distillation(module.heads[str(t)](features), self.previous.heads[str(t)](old_features), self.temperature)
                for t in self.old_tasks
            ]
            return self.alpha * torch.stack(terms).sum()
        cols = torch.tensor(self.old_classes, device=features.device)
        new = module.heads["all"](features)[:, cols]
        with torch.no_grad():
            old = self.previous.heads["all"](old_features)[:, cols]
        return self.alpha * distillation(new, old, self.temperature)

    def on_task_end(self, module: Any, task: Task) -> None:
        self._pending = None
        self.previous = _frozen_copy(module)
        self.old_classes = sorted(set(self.old_classes) | set(task.classes))
        self.old_tasks.append(task.index)

    def describe(self) -> dict:
        return {"class": "LwF", "alpha": self.alpha, "temperature": self.temperature, "previous_model": "frozen copy in memory"}

    def state_dict(self) -> dict:
        state = {"old_classes": self.old_classes, "old_tasks": self.old_tasks}
        if self.previous is not None:
            state["previous"] = self.previous.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.old_classes, self.old_tasks = list(state["old_classes"]), list(state["old_tasks"])
        if self.previous is not None and "previous" in state:
            self.previous.load_state_dict(state["previous"], strict=False)
        else:
            self._pending = state.get("previous")

    def on_task_start(self, module: Any, task: Task) -> None:
        if self._pending is not None:
            self.previous = _frozen_copy(module)
            self.previous.load_state_dict(self._pending, strict=False)
            self._pending = None


def _frozen_copy(module: Any) -> Any:
    # The Trainer and the loss terms (bound to callbacks) are not part of the model: keep them out.
    trainer, terms = getattr(module, "_trainer", None), module.loss_terms
    module._trainer, module.loss_terms = None, {}
    try:
        copied = copy.deepcopy(module)
    finally:
        module._trainer, module.loss_terms = trainer, terms
    copied.requires_grad_(False)
    return copied.eval()
