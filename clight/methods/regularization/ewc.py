"""Elastic weight consolidation (Kirkpatrick et al., 2017)."""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch

from clight.choices import check_choice
from clight.contract import RunContext
from clight.data.task import Task
from clight.distributed import shards_parameters
from clight.methods.base import ContinualCallback
from clight.methods.regularization.fisher import diagonal_fisher
from clight.models.sharding import laid_out_like, local, shard_of, whole

EWCMode = Literal["online", "separate"]


class EWC(ContinualCallback):
    """Elastic weight consolidation with a diagonal empirical Fisher.

    After each task: ``F_t[i] = mean over samples of (d loss / d theta_i)^2`` over the first
    ``fisher_samples`` training samples of the task (per-sample gradients of the module's own
    task loss). ``mode="online"`` (default) keeps ``F = gamma * F + F_t`` and one anchor (the
    weights after the last task), as online EWC does; ``mode="separate"`` keeps one anchor and
    Fisher per task as the original paper does (memory grows with the tasks).
    Penalty: ``lambda_ / 2 * sum_i F[i] (theta_i - anchor_i)^2``.
    """

    # computed alike on every rank from the same samples; with sharded parameters each rank keeps
    # its shards, and checkpoints hold them whole
    state_layout = {"anchors": "sharded", "fishers": "sharded"}

    def __init__(self, lambda_: float = 100.0, fisher_samples: int = 200, mode: EWCMode = "online", gamma: float = 1.0) -> None:
        check_choice("EWC.mode", mode, EWCMode)
        if lambda_ < 0 or fisher_samples < 1:
            raise ValueError(f"EWC needs lambda_ >= 0 and fisher_samples >= 1, got {lambda_}, {fisher_samples}")
        self.lambda_, self.fisher_samples, self.mode, self.gamma = lambda_, fisher_samples, mode, gamma
        self.anchors: list[dict[str, torch.Tensor]] = []
        self.fishers: list[dict[str, torch.Tensor]] = []
        self.fisher_path = "not computed yet"
        self._terms: Optional[tuple[torch.device, list]] = None
        self._sharded = False

    def setup_sequence(self, module: Any, datamodule: Any, context: RunContext) -> None:
        module.add_loss_term("ewc", self.penalty)

    def penalty(self, module: Any, batch: dict, outputs: dict) -> torch.Tensor:
        terms = self._penalty_terms(module)
        total = local(next(module.parameters())).new_zeros((), dtype=torch.float32)
        for param, anchor, fisher in terms:
            total = total + (fisher * (local(param) - anchor).pow(2)).sum()
        value = 0.5 * self.lambda_ * total
        if self._sharded:  # this rank's shards only: the whole value (for the log), the gradient of its shards
            whole_value = value.detach().clone()
            torch.distributed.all_reduce(whole_value)
            value = value + (whole_value - value.detach())
        return value

    def _penalty_terms(self, module: Any) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(parameter, anchor, Fisher) of every trainable anchored parameter, on the module's
        device (with sharded parameters: this rank's shards of anchor and Fisher); built when a
        fit starts, or at the first step after the state or the device changed."""
        device = local(next(module.parameters())).device
        if self._terms is None or self._terms[0] != device:
            params = dict(module.named_parameters())
            terms = [
                (params[name], shard_of(anchor[name], params[name]).to(device), shard_of(f, params[name]).to(device))
                for anchor, fisher in zip(self.anchors, self.fishers)
                for name, f in fisher.items()
                if name in params and params[name].requires_grad
            ]
            self._terms = (device, terms)
        return self._terms[1]

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # the parameters as sharded (if they are) before any forward gathers them
        self._sharded = shards_parameters(trainer.strategy)
        self._terms = None
        self._penalty_terms(pl_module)

    def on_task_start(self, module: Any, task: Task) -> None:
        self._terms = None  # the trainable parameters may change between tasks

    def on_task_end(self, module: Any, task: Task) -> None:
        self._terms = None
        fisher, self.fisher_path = diagonal_fisher(module, task.train, self.fisher_samples)
        anchor = {k: v.detach().clone() for k, v in module.named_parameters() if k in fisher}
        if self.mode == "online" and self.fishers:
            previous = self.fishers[0]
            fisher = {
                k: self.gamma * laid_out_like(previous[k], v).to(v.dtype) + v if k in previous else v for k, v in fisher.items()
            }
            self.anchors, self.fishers = [anchor], [fisher]
        else:
            self.anchors.append(anchor)
            self.fishers.append(fisher)

    def describe(self) -> dict:
        return {
            "class": "EWC",
            "lambda": self.lambda_,
            "fisher_samples": self.fisher_samples,
            "mode": self.mode,
            "gamma": self.gamma,
            "fisher": f"diagonal empirical Fisher, {self.fisher_path}",
        }

    def state_dict(self) -> dict:
        """Whole tensors (with sharded parameters every rank gathers them: every rank calls this)."""
        return {
            "anchors": [{k: whole(v) for k, v in a.items()} for a in self.anchors],
            "fishers": [{k: whole(v) for k, v in f.items()} for f in self.fishers],
        }

    def load_state_dict(self, state: dict) -> None:
        self.anchors, self.fishers = list(state["anchors"]), list(state["fishers"])
        self._terms = None
