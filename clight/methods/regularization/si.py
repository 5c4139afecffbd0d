"""Synaptic intelligence (Zenke, Poole & Ganguli, ICML 2017)."""

from __future__ import annotations

from typing import Any, Literal

import torch

from clight.choices import check_choice
from clight.contract import RunContext
from clight.data.task import Task
from clight.methods.base import ContinualCallback
from clight.methods.regularization.quadratic import QuadraticPenalty

SIGradient = Literal["unregularized", "total"]


class SI(ContinualCallback):
    """Synaptic intelligence: an online path integral of each parameter's contribution to the
    drop of the loss, turned into a quadratic penalty at every task's end.

    During task mu, after every optimizer step, ``omega_i -= g_i * (theta_i(after) - theta_i(before))``,
    where ``g`` is the gradient the step was taken on, without SI's own penalty
    (``gradient="unregularized"``, the paper and the authors' code) or with it (``"total"``,
    Avalanche). At the task's end ``Omega_i += omega_i / (Delta_i^2 + xi)`` with ``Delta`` the
    parameter's total move over the task; ``nonnegative`` clips ``Omega`` at 0 as the authors'
    code does. Penalty: ``c * sum_i Omega_i (theta_i - theta_i(end of previous task))^2``.
    Defaults ``c = 1``, ``xi = 1e-3``: the paper's split-MNIST values.
    """

    state_layout = {"importance": "sharded", "anchor": "sharded", "omega": "sharded"}
    unshardable = "its path integral keeps per-step copies of whole parameters and gradients (foreach ops on local tensors), not yet made to work on FSDP shards"

    def __init__(
        self, c: float = 1.0, xi: float = 1e-3, gradient: SIGradient = "unregularized", nonnegative: bool = False
    ) -> None:
        check_choice("SI.gradient", gradient, SIGradient)
        if c < 0 or xi <= 0:
            raise ValueError(f"SI needs c >= 0 and xi > 0, got c={c}, xi={xi}")
        self.c, self.xi, self.gradient, self.nonnegative = c, xi, gradient, nonnegative
        self.quadratic = QuadraticPenalty()
        self.omega: dict[str, torch.Tensor] = {}  # the running path integral of the task being trained
        self._tracked: list[tuple[str, torch.nn.Parameter]] = []
        self._before: dict[str, torch.Tensor] = {}  # the weights before the step; then minus their move
        self._grad: dict[str, torch.Tensor] = {}  # the gradient the step was taken on
        self._stepped: list[str] = []

    def setup_sequence(self, module: Any, datamodule: Any, context: RunContext) -> None:
        module.add_loss_term("si", self.penalty)

    def penalty(self, module: Any, batch: dict, outputs: dict) -> torch.Tensor:
        return self.c * self.quadratic.value(module)

    def on_task_start(self, module: Any, task: Task) -> None:
        self._tracked = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.omega = {n: torch.zeros_like(p).detach() for n, p in self._tracked}
        self._before = {n: torch.zeros_like(p).detach() for n, p in self._tracked}
        self._grad = {n: torch.zeros_like(p).detach() for n, p in self._tracked}
        self.quadratic.set_anchor(module, {n for n, _ in self._tracked})
        self._stepped = []

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self._stepped = [n for n, p in self._tracked if p.grad is not None]
        if not self._stepped:
            return
        params = dict(self._tracked)
        if self._before[self._stepped[0]].device != params[self._stepped[0]].device:  # the module moved
            self._before = {n: t.to(params[n].device) for n, t in self._before.items()}
            self._grad = {n: t.to(params[n].device) for n, t in self._grad.items()}
        torch._foreach_copy_([self._before[n] for n in self._stepped], [params[n].detach() for n in self._stepped])
        # the penalty's gradient is 2 c * importance * (theta - anchor): subtract it for the task's own gradient
        weighted = self.quadratic.weighted if self.gradient == "unregularized" and self.c else {}
        penalized = [n for n in self._stepped if n in weighted]
        if penalized:
            own = torch._foreach_add([params[n].grad for n in penalized], [weighted[n] for n in penalized], alpha=-2 * self.c)
            self._grad.update(zip(penalized, own))
        rest = [n for n in self._stepped if n not in weighted]
        if rest:
            torch._foreach_copy_([self._grad[n] for n in rest], [params[n].grad for n in rest])

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._stepped:  # no optimizer step in this batch
            return
        params = dict(self._tracked)
        for n in self._stepped:
            if self.omega[n].device != params[n].device:  # loaded from a checkpoint onto another device
                self.omega[n] = self.omega[n].to(params[n].device)
        moved = [self._before[n] for n in self._stepped]
        torch._foreach_sub_(moved, [params[n].detach() for n in self._stepped])  # theta(before) - theta(after)
        torch._foreach_addcmul_([self.omega[n] for n in self._stepped], [self._grad[n] for n in self._stepped], moved)
        self._stepped = []

    def on_task_end(self, module: Any, task: Task) -> None:
        params = dict(module.named_parameters())
        for name, omega in self.omega.items():
            delta = params[name].detach() - self.quadratic.anchor[name].to(omega.device)
            previous = self.quadratic.importance.get(name, torch.zeros_like(omega))
            importance = previous.to(omega.device) + omega / (delta.pow(2) + self.xi)
            self.quadratic.importance[name] = importance.clamp_min(0) if self.nonnegative else importance
        self.quadratic.set_anchor(module)
        self.omega, self._tracked, self._before, self._grad = {}, [], {}, {}

    def describe(self) -> dict:
        return {"class": "SI", "c": self.c, "xi": self.xi, "gradient": self.gradient, "nonnegative": self.nonnegative}

    def state_dict(self) -> dict:
        return {**self.quadratic.state_dict(), "omega": dict(self.omega)}

    def load_state_dict(self, state: dict) -> None:
        self.quadratic.load_state_dict(state)
        self.omega = {n: v.clone() for n, v in state["omega"].items()}
