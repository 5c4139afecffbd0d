"""InfLoRA: each task's LoRA down-projection A is designed, not trained.

At the start of task t, with the adapters of tasks < t applied, one pass over the task's training
samples gives every LoRA layer's input representation ``C = mean x x^T``; the new adapter's A rows
are the top directions of that representation outside the subspace earlier tasks protect
(``subspace.design_rows``), scaled to norm ``1/sqrt(3)`` (the released code's, the norm of a LoRA
A row at its usual initialisation). A stays frozen; only B trains (from zero), so the task's update
``B A`` reads nothing from the protected input directions. After the task, a second pass with the
trained adapters updates the protected subspaces (``subspace.update``) with the threshold rising
from ``epsilon_start`` to ``epsilon_end`` over the sequence.

Identical on every rank: each rank reads its share of the samples, the sums are added over the
ranks, and rank 0's designed rows and subspaces are broadcast.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from clight.choices import check_choice
from clight.contract import ConfigError, RunContext
from clight.data.task import Task
from clight.distributed import broadcast_from_rank_zero, global_rank, world_size
from clight.methods.inflora.representation import input_covariances
from clight.methods.inflora.subspace import Subspace, Variant, design_rows, threshold, update
from clight.methods.lora_family import TaskLoRAMethod, lora_layers

ROW_NORM = 1 / math.sqrt(3)
SALT = 0x496E66  # "Inf": the run-seed salt of the sample subset


class InfLoRA(TaskLoRAMethod):
    """InfLoRA (Liang and Li, CVPR 2024) on the model's LoRA layers.

    ``epsilon_start`` / ``epsilon_end``: the energy threshold after task t is
    ``epsilon_start + (epsilon_end - epsilon_start) * t / T`` (paper: 0.95 to 1 on CIFAR-100 and
    DomainNet, 0.98 to 1 on ImageNet-R; the GainLoRA port to T5 starts at 0.995). ``variant``:
    ``paper`` or ``released_code`` (see ``subspace.py``). ``samples``: how many training samples
    of each task the two passes read (all by default, as the paper; a seeded subset otherwise).
    """

    state_layout = {
        **TaskLoRAMethod.state_layout,
        "bases": "replicated",
        "kinds": "replicated",
        "leaders": "replicated",
        "history": "replicated",
    }
    unshardable = "its subspaces come from hooks on whole linear layers' inputs and its design writes whole LoRA matrices"

    per_task = True
    trained_parts = ("lora_B",)

    def __init__(
        self,
        epsilon_start: float = 0.95,
        epsilon_end: float = 1.0,
        variant: Variant = "paper",
        samples: Optional[int] = None,
        batch_size: int = 16,
        save_adapters: bool = True,
        fuse_earlier: bool = True,
    ) -> None:
        check_choice("InfLoRA.variant", variant, Variant)
        if not 0 < epsilon_start <= epsilon_end <= 1:
            raise ValueError(f"InfLoRA needs 0 < epsilon_start <= epsilon_end <= 1, got {epsilon_start} and {epsilon_end}")
        if (samples is not None and samples < 1) or batch_size < 1:
            raise ValueError(f"InfLoRA.samples (or null) and batch_size must be positive, got {samples} and {batch_size}")
        super().__init__(save_adapters, fuse_earlier)
        self.epsilon_start, self.epsilon_end, self.variant = epsilon_start, epsilon_end, variant
        self.samples, self.batch_size = samples, batch_size
        self.subspaces: dict[str, Subspace] = {}
        self.leaders: dict[str, str] = {}
        self.history: list[dict] = []
        self._datamodule: Any = None
        self._num_tasks = 0
        self._design_tokens = 0

    def setup_sequence(self, module: Any, datamodule: Any, context: RunContext) -> None:
        super().setup_sequence(module, datamodule, context)
        self._datamodule, self._num_tasks = datamodule, datamodule.num_tasks

    # -- between fits -----------------------------------------------------------------------------
    def on_task_start(self, module: Any, task: Task) -> None:
        super().on_task_start(module, task)
        covariances, self._design_tokens = self._covariances(module, task)
        a = self.adapters.weights(task.index, "lora_A")
        rows = {
            leader: (ROW_NORM * design_rows(cov, self.subspaces.get(leader), a[leader].shape[0], self.variant)).float()
            for leader, cov in covariances.items()
        }
        rows = broadcast_from_rank_zero(rows)
        with torch.no_grad():
            for name, weight in a.items():
                weight.copy_(rows[self.leaders[name]].to(device=weight.device, dtype=weight.dtype))

    def on_task_end(self, module: Any, task: Task) -> None:
        record: dict = {"task": task.index, "design_tokens": self._design_tokens}
        if task.index < self._num_tasks - 1:  # the subspaces after the last task would protect nothing more
            covariances, record["update_tokens"] = self._covariances(module, task)
            epsilon = record["epsilon"] = threshold(task.index, self._num_tasks, self.epsilon_start, self.epsilon_end)
            updated = {
                leader: update(cov, self.subspaces.get(leader), epsilon, self.variant) for leader, cov in covariances.items()
            }
            self.subspaces = broadcast_from_rank_zero(updated)
            record["protected_dims"] = {k: s.protected_dims for k, s in self.subspaces.items()}
        self.history.append(record)
        super().on_task_end(module, task)

    def _covariances(self, module: Any, task: Task) -> tuple[dict[str, torch.Tensor], int]:
        dataset = task.train
        indices = list(range(len(dataset)))
        if self.samples is not None and self.samples < len(indices):
            order = torch.randperm(len(indices), generator=self.context.generator(SALT, task.index))
            indices = sorted(order[: self.samples].tolist())
        shard = indices[global_rank() :: world_size()]
        if not shard:
            raise ConfigError(
                f"InfLoRA: task {task.index} has {len(indices)} training samples, fewer than the {world_size()} ranks"
            )
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, shard),
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=self._datamodule.train_collate_fn(),
        )
        layers = lora_layers(self.adapters.network)
        covariances, leaders, tokens = input_covariances(module, layers, loader, lambda batch: batch["attention_mask"])
        if self.leaders and leaders != self.leaders:
            raise RuntimeError("InfLoRA: the LoRA layers share their inputs differently from the first task")
        self.leaders = leaders
        return covariances, tokens

    # -- state ------------------------------------------------------------------------------------
    def protected_projection(self, layer: str) -> torch.Tensor:
        """The projection onto the input directions protected for ``layer`` (zero before any task ended)."""
        space = self.subspaces.get(self.leaders.get(layer, layer))
        d = self.adapters.weights(0, "lora_A")[layer].shape[1]
        return space.protected_projection() if space is not None else torch.zeros(d, d, dtype=torch.float64)

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "bases": {k: s.basis for k, s in self.subspaces.items()},  # float64: the next design reads them as they are
            "kinds": {k: s.kind for k, s in self.subspaces.items()},
            "leaders": dict(self.leaders),
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.subspaces = {k: Subspace(b.double(), state["kinds"][k]) for k, b in state["bases"].items()}
        self.leaders, self.history = dict(state["leaders"]), list(state["history"])

    def describe(self) -> dict:
        return {
            **super().describe(),
            "epsilon_start": self.epsilon_start,
            "epsilon_end": self.epsilon_end,
            "variant": self.variant,
            "design": "top eigenvectors of F C F (paper)"
            if self.variant == "paper"
            else "left singular vectors of F C (released code)",
            "row_norm": ROW_NORM,
            "samples_per_pass": self.samples or "all training samples",
            "layer_groups": len(set(self.leaders.values())),
            "history": self.history,
        }
