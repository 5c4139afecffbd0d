"""Shrink & perturb (Ash & Adams, NeurIPS 2020) as a Lightning callback, with its two algorithms
as small objects: at every task boundary (the paper) or after every optimizer step (the variant
the plasticity paper compared with)."""

from __future__ import annotations

import copy
from typing import Any, Literal, Optional, Sequence

import torch
from torch import nn

from clight.choices import check_choice
from clight.contract import RunContext
from clight.methods.base import ContinualCallback
from clight.seeding import seeded_generator

ShrinkMode = Literal["boundary", "step"]


def fresh_parameters(model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A freshly initialised copy of every parameter of ``model`` that some module's
    ``reset_parameters`` covers, drawn on CPU from ``generator`` (identical on every rank)."""
    fresh: dict[str, torch.Tensor] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        for name, module in model.named_modules():
            if not hasattr(module, "reset_parameters") or not list(module.parameters(recurse=False)):
                continue
            scratch = copy.deepcopy(module).cpu()
            scratch.reset_parameters()
            for pname, p in scratch.named_parameters(recurse=False):
                fresh[f"{name}.{pname}" if name else pname] = p.detach()
    return fresh


class BoundaryShrink:
    """``theta <- shrink * theta + perturb * theta_fresh`` at the start of every task after the first."""

    def __init__(self, shrink: float, perturb: float) -> None:
        if not (0 <= shrink <= 1 and perturb >= 0):
            raise ValueError(f"ShrinkPerturb needs 0 <= shrink <= 1 and perturb >= 0, got {shrink}, {perturb}")
        self.shrink, self.perturb = float(shrink), float(perturb)
        self.uncovered: list[str] = []

    @torch.no_grad()
    def apply(self, model: nn.Module, params: list[tuple[str, nn.Parameter]], generator: torch.Generator) -> None:
        fresh = fresh_parameters(model, generator)
        self.uncovered = []
        for name, p in params:
            p.mul_(self.shrink)
            if name in fresh:
                p.add_(fresh[name].to(p), alpha=self.perturb)
            else:
                self.uncovered.append(name)

    def describe(self) -> dict:
        return {"shrink": self.shrink, "perturb": self.perturb, "only_shrunk": self.uncovered}


class StepShrink:
    """``theta <- (1 - weight_decay) * theta + N(0, noise_std^2)`` after every optimizer step."""

    def __init__(self, weight_decay: float, noise_std: float) -> None:
        if not (0 <= weight_decay < 1 and noise_std >= 0):
            raise ValueError(f"ShrinkPerturb needs 0 <= weight_decay < 1 and noise_std >= 0, got {weight_decay}, {noise_std}")
        self.weight_decay, self.noise_std = float(weight_decay), float(noise_std)

    @torch.no_grad()
    def apply(self, model: nn.Module, params: list[tuple[str, nn.Parameter]], generator: torch.Generator) -> None:
        for _, p in params:
            if self.weight_decay:
                p.mul_(1 - self.weight_decay)
            if self.noise_std:
                p.add_(torch.randn(p.shape, generator=generator).to(p), alpha=self.noise_std)

    def describe(self) -> dict:
        return {"weight_decay": self.weight_decay, "noise_std": self.noise_std}


class ShrinkPerturb(ContinualCallback):
    """``mode="boundary"`` (Ash & Adams): at the start of every task after the first,
    ``theta <- shrink * theta + perturb * theta_fresh`` for every trainable parameter, with
    ``theta_fresh`` a fresh initialisation of the same module (defaults 0.4 and 0.1); the runner
    builds a fresh optimizer for every task. ``mode="step"`` (the variant the plasticity paper
    compared with): after every optimizer step ``theta <- (1 - weight_decay) * theta + N(0, noise_std^2)``.

    ``modules``: only parameters of these modules (names in ``named_modules()``); default all
    trainable parameters. Parameters no module's ``reset_parameters`` covers are only shrunk
    (boundary mode) and are listed in ``describe()``. ``seed``: of the fresh weights and the
    noise (default: derived from the run's seed).
    """

    seed_salt = 73

    state_layout = {"step_count": "replicated", "applied_tasks": "replicated"}
    unshardable = "it draws its noise for whole parameters; that is not written for FSDP's sharded parameters yet"

    def __init__(
        self,
        mode: ShrinkMode = "boundary",
        shrink: float = 0.4,
        perturb: float = 0.1,
        weight_decay: float = 1e-4,
        noise_std: float = 1e-4,
        modules: Optional[Sequence[str]] = None,
        seed: Optional[int] = None,
    ) -> None:
        super().__init__()
        check_choice("ShrinkPerturb.mode", mode, ShrinkMode)
        self.mode = mode
        self.algorithm = BoundaryShrink(shrink, perturb) if mode == "boundary" else StepShrink(weight_decay, noise_std)
        self.modules = list(modules) if modules is not None else None
        self.seed_option = seed
        self.seed = int(seed) if seed is not None else 0
        self.step_count = 0
        self.applied_tasks: list[int] = []
        self._last_global_step = 0

    def setup_sequence(self, module: Any, datamodule: Any, context: RunContext) -> None:
        if self.seed_option is None:
            self.seed = context.seed_for(self.seed_salt)

    def _parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if self.modules is None:
            return params
        known = dict(model.named_modules())
        missing = [m for m in self.modules if m not in known]
        if missing:
            raise ValueError(f"ShrinkPerturb.modules {missing} are not modules of {type(model).__name__}")
        return [(n, p) for n, p in params if any(n == m or n.startswith(m + ".") for m in self.modules)]

    def on_task_start(self, module: nn.Module, task) -> None:
        if not isinstance(self.algorithm, BoundaryShrink) or task.index == 0 or task.index in self.applied_tasks:
            return
        self.algorithm.apply(module, self._parameters(module), seeded_generator(self.seed, task.index))
        self.applied_tasks.append(task.index)

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_global_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not isinstance(self.algorithm, StepShrink) or trainer.global_step == self._last_global_step:
            return
        self._last_global_step = trainer.global_step
        self.step_count += 1
        self.algorithm.apply(pl_module, self._parameters(pl_module), seeded_generator(self.seed, self.step_count))

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "applied_tasks": list(self.applied_tasks)}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state.get("step_count", 0))
        self.applied_tasks = [int(t) for t in state.get("applied_tasks", [])]

    def describe(self) -> dict:
        info = super().describe()
        info.update(
            {
                "paper": "Ash & Adams, On warm-starting neural network training, NeurIPS 2020",
                "mode": self.mode,
                "seed": self.seed if self.seed_option is not None else f"{self.seed} (derived from the run's seed)",
            }
        )
        info.update(self.algorithm.describe())
        return info
