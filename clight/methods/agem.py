"""Averaged gradient episodic memory, A-GEM (Chaudhry, Ranzato, Rohrbach & Elhoseiny, ICLR 2019)."""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
from lightning.fabric.utilities import move_data_to_device

from clight.choices import check_choice
from clight.contract import ConfigError, MemoryData, RunContext
from clight.data.samplers import memory_batch
from clight.data.task import SequenceInfo, Task
from clight.distributed import global_rank, sum_across_ranks, world_size
from clight.methods.base import ContinualCallback

SALT = 0xA6E4  # the run-seed salt of everything A-GEM draws
ReferenceSampling = Literal["uniform", "per_task"]


def project(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> bool:
    """A-GEM's update rule, in place: when ``g . g_ref < 0``, ``g <- g - (g . g_ref / g_ref . g_ref) g_ref``.
    Returns whether ``g`` was projected."""
    dot = sum((g * r).sum() for g, r in zip(grads, reference))
    if not dot < 0:
        return False
    scale = dot / sum(r.pow(2).sum() for r in reference)
    for g, r in zip(grads, reference):
        g.sub_(scale * r)
    return True


class AGEM(ContinualCallback):
    """A-GEM: the step never increases the loss on an episodic memory of earlier tasks, to first order.

    After each task, ``samples_per_task`` of its training samples, drawn at random, join the
    memory (kept as ``(task, index)`` references). Before every optimizer step from the second
    task on, the reference gradient ``g_ref`` of the task loss on ``reference_batch_size`` memory
    samples is computed; if the step's gradient ``g`` conflicts with it (``g . g_ref < 0``), ``g``
    is replaced by its projection ``g - (g . g_ref / g_ref . g_ref) g_ref``, else left alone.
    The reference batch is drawn uniformly from the memory (``reference_sampling="uniform"``, the
    paper) or in equal parts from every earlier task (``"per_task"``, Avalanche). Under DDP, the
    global reference batch is cut across ranks like a training batch and ``g_ref`` is averaged
    over them, so every rank projects alike.
    """

    state_layout = {"entries": "replicated", "projected": "replicated", "steps": "replicated", "generator": "replicated"}
    unshardable = (
        "its projection takes dot products of whole gradients, and with sharded parameters each rank holds a shard of each"
    )

    data_protocol = MemoryData

    def __init__(
        self, samples_per_task: int = 250, reference_batch_size: int = 256, reference_sampling: ReferenceSampling = "uniform"
    ) -> None:
        check_choice("AGEM.reference_sampling", reference_sampling, ReferenceSampling)
        if samples_per_task < 1 or reference_batch_size < 1:
            raise ValueError(
                f"AGEM needs samples_per_task >= 1 and reference_batch_size >= 1, got {samples_per_task}, {reference_batch_size}"
            )
        self.samples_per_task, self.reference_batch_size = samples_per_task, reference_batch_size
        self.reference_sampling = reference_sampling
        self.entries = torch.zeros(0, 2, dtype=torch.long)
        self.projected: list[int] = []  # optimizer steps whose gradient was projected, per task
        self.steps: list[int] = []  # optimizer steps with a reference gradient, per task
        self._generator: Optional[torch.Generator] = None
        self._context: Optional[RunContext] = None
        self._datamodule: Any = None
        self._memory: Any = None

    def check_compatible(self, module: Any, datamodule: Any, info: SequenceInfo) -> None:
        super().check_compatible(module, datamodule, info)
        if not datamodule.serves_method_memory:
            raise ConfigError(f"AGEM keeps references to training samples, which {type(datamodule).__name__} does not offer")

    def setup_sequence(self, module: Any, datamodule: Any, context: RunContext) -> None:
        self._context, self._datamodule = context, datamodule
        self._generator = context.generator(SALT)

    # -- the memory -----------------------------------------------------------------------------
    def on_task_start(self, module: Any, task: Task) -> None:
        self._memory = self._datamodule.memory_dataset(self.entries) if len(self.entries) else None
        self.projected.append(0)
        self.steps.append(0)

    def on_task_end(self, module: Any, task: Task) -> None:
        n = len(task.train)
        chosen = torch.randperm(n, generator=self._context.generator(SALT, 1, task.index))[: self.samples_per_task]
        new = torch.stack([torch.full_like(chosen, task.index), chosen.sort().values], 1)
        self.entries = torch.cat([self.entries, new])

    # -- the projection --------------------------------------------------------------------------
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self._memory is None:
            return
        params = [p for p in pl_module.parameters() if p.requires_grad and p.grad is not None]
        reference = self.reference_gradient(pl_module, params)
        self.steps[-1] += 1
        self.projected[-1] += int(project([p.grad for p in params], reference))

    def reference_gradient(self, module: Any, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """The task loss's gradient on a memory batch, averaged over ranks (zeros where a parameter is unused)."""
        rank, world = global_rank(), world_size()
        rows = self._reference_rows(rank, world)
        if len(rows) == 0:  # a memory smaller than the number of ranks: the same on every rank
            return [torch.zeros_like(p) for p in params]
        batch = move_data_to_device(self._memory.__getitems__(rows.tolist()), module.device)
        grads = torch.autograd.grad(module.task_loss(batch)[0], params, allow_unused=True)
        return [sum_across_ranks(torch.zeros_like(p) if g is None else g) / world for p, g in zip(params, grads)]

    def _reference_rows(self, rank: int, world: int) -> torch.Tensor:
        if self.reference_sampling == "uniform":
            return memory_batch(len(self.entries), self.reference_batch_size, self._generator, rank, world)
        tasks = self.entries[:, 0].unique()
        share = max(world, self.reference_batch_size // len(tasks))
        parts = []
        for t in tasks.tolist():
            rows = (self.entries[:, 0] == t).nonzero().flatten()
            parts.append(rows[memory_batch(len(rows), share, self._generator, rank, world)])
        return torch.cat(parts)

    # -- the record -------------------------------------------------------------------------------
    def describe(self) -> dict:
        return {
            "class": "AGEM",
            "samples_per_task": self.samples_per_task,
            "reference_batch_size": self.reference_batch_size,
            "reference_sampling": self.reference_sampling,
            "memory": int(len(self.entries)),
            "projected_steps_per_task": list(self.projected),
            "steps_per_task": list(self.steps),
        }

    def state_dict(self) -> dict:
        state = {"entries": self.entries.clone(), "projected": list(self.projected), "steps": list(self.steps)}
        if self._generator is not None:
            state["generator"] = self._generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.entries = state["entries"].clone()
        self.projected, self.steps = list(state["projected"]), list(state["steps"])
        if "generator" in state and self._generator is not None:
            self._generator.set_state(state["generator"])
