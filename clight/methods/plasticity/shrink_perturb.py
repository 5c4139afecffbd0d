"""Shrink & perturb (Ash & Adams, NeurIPS 2020) as a Lightning callback."""

from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
from torch import nn

from clight.methods.base import ContinualCallback
from clight.methods.plasticity.units import shared_generator

MODES = ("boundary", "step")


def fresh_parameters(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A freshly initialised copy of every parameter of ``model`` that some module's
    ``reset_parameters`` covers, drawn on CPU from ``seed`` (identical on every rank)."""
    fresh: dict[str, torch.Tensor] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, module in model.named_modules():
            if not hasattr(module, "reset_parameters") or not list(module.parameters(recurse=False)):
                continue
            scratch = copy.deepcopy(module).cpu()
            scratch.reset_parameters()
            for pname, p in scratch.named_parameters(recurse=False):
                fresh[f"{name}.{pname}" if name else pname] = p.detach()
    return fresh


class ShrinkPerturb(ContinualCallback):
    """``mode="boundary"`` (Ash & Adams): at the start of every task after the first,
    ``theta <- shrink * theta + perturb * theta_fresh`` for every trainable parameter, with
    ``theta_fresh`` a fresh initialisation of the same module (defaults 0.4 and 0.1); the runner
    builds a fresh optimizer for every task. ``mode="step"`` (the variant the plasticity paper
    compared with): after every optimizer step ``theta <- (1 - weight_decay) * theta + N(0, noise_std^2)``.

    ``modules``: only parameters of these modules (names in ``named_modules()``); default all
    trainable parameters. Parameters no module's ``reset_parameters`` covers are only shrunk
    (boundary mode) and are listed in ``describe()``.
    """

    def __init__(
        self,
        mode: str = "boundary",
        shrink: float = 0.4,
        perturb: float = 0.1,
        weight_decay: float = 1e-4,
        noise_std: float = 1e-4,
        modules: Optional[Sequence[str]] = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"ShrinkPerturb.mode must be one of {MODES}, got {mode!r}")
        if mode == "boundary" and not (0 <= shrink <= 1 and perturb >= 0):
            raise ValueError(f"ShrinkPerturb needs 0 <= shrink <= 1 and perturb >= 0, got {shrink}, {perturb}")
        if mode == "step" and not (0 <= weight_decay < 1 and noise_std >= 0):
            raise ValueError(f"ShrinkPerturb needs 0 <= weight_decay < 1 and noise_std >= 0, got {weight_decay}, {noise_std}")
        self.mode, self.shrink, self.perturb = mode, float(shrink), float(perturb)
        self.weight_decay, self.noise_std = float(weight_decay), float(noise_std)
        self.modules = list(modules) if modules is not None else None
        self.seed = int(seed)
        self.step_count = 0
        self.applied_tasks: list[int] = []
        self.uncovered: list[str] = []
        self._last_global_step = 0

    def _parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if self.modules is None:
            return params
        known = dict(model.named_modules())
        missing = [m for m in self.modules if m not in known]
        if missing:
            raise ValueError(f"ShrinkPerturb.modules {missing} are not modules of {type(model).__name__}")
        return [(n, p) for n, p in params if any(n == m or n.startswith(m + ".") for m in self.modules)]

    @torch.no_grad()
    def on_task_start(self, module: nn.Module, task) -> None:
        if self.mode != "boundary" or task.index == 0 or task.index in self.applied_tasks:
            return
        fresh = fresh_parameters(module, self.seed * 100_003 + task.index)
        self.uncovered = []
        for name, p in self._parameters(module):
            p.mul_(self.shrink)
            if name in fresh:
                p.add_(fresh[name].to(p), alpha=self.perturb)
            else:
                self.uncovered.append(name)
        self.applied_tasks.append(task.index)

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_global_step = trainer.global_step

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.mode != "step" or trainer.global_step == self._last_global_step:
            return
        self._last_global_step = trainer.global_step
        self.step_count += 1
        generator = shared_generator(self.seed, self.step_count)
        for _, p in self._parameters(pl_module):
            if self.weight_decay:
                p.mul_(1 - self.weight_decay)
            if self.noise_std:
                p.add_(torch.randn(p.shape, generator=generator).to(p), alpha=self.noise_std)

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "applied_tasks": list(self.applied_tasks)}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state.get("step_count", 0))
        self.applied_tasks = [int(t) for t in state.get("applied_tasks", [])]

    def describe(self) -> dict:
        info = super().describe()
        info.update({"paper": "Ash & Adams, On warm-starting neural network training, NeurIPS 2020", "mode": self.mode, "seed": self.seed})
        if self.mode == "boundary":
            info.update({"shrink": self.shrink, "perturb": self.perturb, "only_shrunk": self.uncovered})
        else:
            info.update({"weight_decay": self.weight_decay, "noise_std": self.noise_std})
        return info
