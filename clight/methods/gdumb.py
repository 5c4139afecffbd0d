"""GDumb (Prabhu, Torr & Dokania, ECCV 2020): a greedy class-balanced memory, and a model
trained from scratch on that memory alone before every evaluation."""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch

from clight.choices import check_choice
from clight.contract import ConfigError, MemoryData, RunContext
from clight.data.replay import GreedyClassBalancedMemory
from clight.data.task import SequenceInfo, Task
from clight.methods.base import ContinualCallback

SALT = 0x6D0B  # the run-seed salt of everything GDumb draws
Reinit = Literal["reset", "initial"]


def reset_all(module: torch.nn.Module, seed: int) -> None:
    """Fresh weights for every parameter, drawn as each layer draws them (``reset_parameters``),
    from generators seeded by ``seed``: the same on every rank and after a resume."""
    cuda = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for layer in module.modules():
            if hasattr(layer, "reset_parameters") and any(True for _ in layer.parameters(recurse=False)):
                layer.reset_parameters()


def _layers_without_reset(module: torch.nn.Module) -> list[str]:
    return [
        name
        for name, layer in module.named_modules()
        if any(True for _ in layer.parameters(recurse=False)) and not hasattr(layer, "reset_parameters")
    ]


class GDumb(ContinualCallback):
    """GDumb: store greedily and class-balanced, then learn from the memory alone.

    At each task's start its training samples are offered, in order, to a greedy class-balanced
    memory of ``capacity`` samples (``GreedyClassBalancedMemory``: the paper's sampler). The model
    is then re-initialised and the task's fit trains it on the memory only (the data module's
    ``only`` stream), so the model scored after every task has learnt from scratch on the memory,
    as the paper evaluates it. ``reinit="reset"`` (paper: a new random model) redraws every
    layer's weights (``reset_parameters``) from generators seeded by the run seed and the task;
    ``"initial"`` (Avalanche) restores the weights the layers had before the first task (a
    pretrained backbone stays pretrained) and redraws those of layers added since (heads). The fit's length, optimizer and schedule are the run's own
    (``trainer.max_epochs``, the model's optimizer): the memory is small, so give it more epochs
    than the stream methods get.
    """

    state_layout = {"entries": "replicated", "labels": "replicated", "seen": "replicated", "initial": "sharded"}
    unshardable = "not yet tested with sharded parameters (docs/scaling.md lists the methods that are)"

    data_protocol = MemoryData

    def __init__(self, capacity: int = 1000, reinit: Reinit = "reset") -> None:
        check_choice("GDumb.reinit", reinit, Reinit)
        if capacity < 1:
            raise ValueError(f"GDumb needs a capacity of at least 1, got {capacity}")
        self.capacity, self.reinit = capacity, reinit
        self.memory: Optional[GreedyClassBalancedMemory] = None
        self.initial: dict[str, torch.Tensor] = {}
        self._context: Optional[RunContext] = None

    def check_compatible(self, module: Any, datamodule: Any, info: SequenceInfo) -> None:
        super().check_compatible(module, datamodule, info)
        datamodule.claim_training_memory(self, "GDumb")
        if info.setting == "task_incremental" and getattr(module, "train_old_heads", True) is False:
            raise ConfigError(
                "GDumb retrains every task's head on the memory; give the model train_old_heads: true for a task-incremental sequence"
            )
        missing = _layers_without_reset(module) if self.reinit == "reset" else []
        if missing:
            raise ConfigError(
                f"GDumb(reinit='reset') cannot draw fresh weights for {missing} (no reset_parameters); use reinit: initial"
            )

    def setup_sequence(self, module: Any, datamodule: Any, context: RunContext) -> None:
        self._context = context
        self.memory = GreedyClassBalancedMemory(self.capacity, context.seed_for(SALT))
        datamodule.replay_from("GDumb", self.memory, "only")
        if self.reinit == "initial" and not self.initial:
            # every layer's state; not the model's own buffers (such as which classes it has seen)
            self.initial = {k: v.detach().clone() for k, v in module.state_dict().items() if "." in k}

    def on_task_start(self, module: Any, task: Task) -> None:
        self.memory.add_task(task.index, task.train.targets)
        reset_all(module, self._context.seed_for(SALT, task.index))
        if self.reinit == "initial":
            module.load_state_dict(self.initial, strict=False)  # layers added since keep the fresh weights

    def describe(self) -> dict:
        counts = self.memory.labels.bincount().tolist() if self.memory is not None and len(self.memory) else []
        return {
            "class": "GDumb",
            "capacity": self.capacity,
            "reinit": self.reinit,
            "memory": "greedy class-balanced (Prabhu et al., Algorithm 1)",
            "samples_per_class": {c: n for c, n in enumerate(counts) if n},
        }

    def state_dict(self) -> dict:
        state = self.memory.state_dict() if self.memory is not None else {}
        return {**state, "initial": self.initial}

    def load_state_dict(self, state: dict) -> None:
        self.memory.load_state_dict(state)
        self.initial = dict(state["initial"])
