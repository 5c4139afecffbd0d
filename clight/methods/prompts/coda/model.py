"""CODA-Prompt: continual decomposed attention-based prompting (Smith et al., CVPR 2023)."""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.nn import functional as F

from clight.choices import check_choice
from clight.contract import ConfigError
from clight.data.task import SequenceInfo, Task
from clight.methods.prompts.model import Pooling, PromptClassifier
from clight.methods.prompts.vit import Prompting
from clight.models.module import default_optimizer

Init = Literal["start", "per_task"]


def orthonormal_rows(existing: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` random unit rows orthogonal to each other and to the (orthonormal) rows of
    ``existing`` (Gram-Schmidt, as the released code initialises components), drawn from the
    global generator."""
    dim = existing.shape[1]
    if existing.shape[0] + count > dim:
        raise ValueError(f"cannot place {existing.shape[0] + count} orthogonal rows in {dim} dimensions")
    rows = torch.randn(count, dim, dtype=torch.float64).to(existing.device)  # the CPU generator on any device
    basis = existing.double()
    rows = rows - (rows @ basis.T) @ basis
    q, r = torch.linalg.qr(rows.T)
    return (q * torch.sign(torch.diagonal(r))).T.to(existing.dtype)


class CODAComponents(nn.Module):
    """Per prompted block: ``pool_size`` prompt components ``[pool, length, D]``, their keys and their
    attention vectors ``[pool, D]``."""

    def __init__(self, layers: int, pool_size: int, length: int, dim: int) -> None:
        super().__init__()
        self.components = nn.Parameter(torch.zeros(layers, pool_size, length, dim))
        self.keys = nn.Parameter(torch.zeros(layers, pool_size, dim))
        self.attention = nn.Parameter(torch.zeros(layers, pool_size, dim))

    @torch.no_grad()
    def orthogonalise(self, start: int, stop: int) -> None:
        """Re-draw components, keys and attention vectors ``start:stop`` of every layer orthonormal
        to rows ``0:start`` (and each other)."""
        for tensor in (self.components, self.keys, self.attention):
            for layer in range(tensor.shape[0]):
                flat = tensor[layer].reshape(tensor.shape[1], -1)
                flat[start:stop] = orthonormal_rows(flat[:start], stop - start)
                tensor[layer] = flat.view_as(tensor[layer])


def ortho_penalty(rows: torch.Tensor) -> torch.Tensor:
    """``mean((R R^T - I)^2)`` over a matrix of rows (the released code's penalty)."""
    gram = rows @ rows.T
    return (gram - torch.eye(len(rows), device=rows.device, dtype=rows.dtype)).pow(2).mean()


class CODAPrompt(PromptClassifier):
    """CODA-Prompt on a frozen timm ViT: in every block of ``layers``, a prompt is the weighted sum of
    ``pool_size`` components, ``p = sum_m alpha_m P_m`` with ``alpha_m = cos(q * A_m, K_m)`` (the query
    times the component's attention vector, against its key), prepended to that block's attention
    keys (first ``length / 2`` tokens) and values (the rest): prefix tuning. Each task adds
    ``pool_size / T`` components; earlier tasks' are frozen, later tasks' unused. Components, keys and
    attention vectors are orthonormal at initialisation: all at the start (``init: start``, the
    paper) or each task's when it starts (``per_task``, the released code now). ``ortho_weight``
    adds the released code's orthogonality penalty (0 there and here). Trained end to end by
    cross-entropy alone; the head reads the [CLS] token. Defaults: the paper's (M = 100, L_p = 8,
    blocks 0-4); see ``docs/methods/prompts.md``.
    """

    method_name = "CODA-Prompt (Smith et al., CVPR 2023)"

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        pool_size: int = 100,
        length: int = 8,
        layers: Sequence[int] = (0, 1, 2, 3, 4),
        init: Init = "start",
        ortho_weight: float = 0.0,
        pooling: Pooling = "token",
        train_mask: bool = True,
    ) -> None:
        check_choice("CODAPrompt.init", init, Init)
        if pool_size < 1 or length < 2 or length % 2 or not layers or ortho_weight < 0:
            raise ValueError("CODAPrompt needs pool_size >= 1, an even length >= 2, layers, and ortho_weight >= 0")
        super().__init__(backbone, optimizer, lr_scheduler, pooling, train_mask)
        self.pool_size, self.length, self.layers = pool_size, length, [int(i) for i in layers]
        self.init, self.ortho_weight = init, ortho_weight

    def has_prompt_loss(self) -> bool:
        return self.ortho_weight > 0

    def check_prompts(self, info: SequenceInfo) -> None:
        if any(not 0 <= i < self.depth for i in self.layers) or len(set(self.layers)) < len(self.layers):
            raise ConfigError(f"CODAPrompt: layers {self.layers} must be distinct blocks of the ViT's {self.depth} (0-based)")
        if self.pool_size < info.num_tasks:
            raise ConfigError(f"CODAPrompt: pool_size {self.pool_size} gives no component to some of the {info.num_tasks} tasks")
        if self.pool_size > self.embed_dim:
            raise ConfigError(
                f"CODAPrompt: {self.pool_size} keys cannot be orthogonal in {self.embed_dim} dimensions; lower pool_size"
            )

    @property
    def per_task(self) -> int:
        return self.pool_size // self.sequence.num_tasks

    def build_prompts(self, info: SequenceInfo) -> nn.Module:
        prompts = CODAComponents(len(self.layers), self.pool_size, self.length, self.embed_dim)
        prompts.orthogonalise(0, self.pool_size if self.init == "start" else self.pool_size // info.num_tasks)
        return prompts

    def on_task_start(self, task: Task) -> None:
        super().on_task_start(task)
        if self.init == "per_task" and task.index > 0:
            self.prompts.orthogonalise(task.index * self.per_task, (task.index + 1) * self.per_task)

    def component_slice(self, index: int, training: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Block ``index``'s components, keys and attention vectors in use: the current task's and
        every earlier task's (detached in training, so only the current task's train)."""
        start, stop = self.current_task * self.per_task, (self.current_task + 1) * self.per_task
        parts = (self.prompts.components[index], self.prompts.keys[index], self.prompts.attention[index])
        if training:
            return tuple(torch.cat([p[:start].detach(), p[start:stop]]) for p in parts)
        return tuple(p[:stop] for p in parts)

    def weights(self, query: torch.Tensor, keys: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """``alpha [B, m]``: cosine of the attended query ``q * A_m`` to key ``K_m``."""
        attended = F.normalize(query[:, None, :] * attention[None], dim=-1)
        return (attended * F.normalize(keys, dim=-1)[None]).sum(-1)

    def compose(self, query: torch.Tensor, task_id: Optional[torch.Tensor]) -> tuple[Prompting, Optional[torch.Tensor]]:
        prefixes, penalty = {}, None
        half = self.length // 2
        for index, layer in enumerate(self.layers):
            components, keys, attention = self.component_slice(index, self.training)
            prompt = torch.einsum("bm,mld->bld", self.weights(query, keys, attention), components)
            prefixes[layer] = (prompt[:, :half], prompt[:, half:])
            if self.training and self.ortho_weight > 0:
                term = ortho_penalty(keys) + ortho_penalty(attention) + ortho_penalty(components.flatten(1))
                penalty = self.ortho_weight * term if penalty is None else penalty + self.ortho_weight * term
        return Prompting(prefixes=prefixes), penalty

    def describe(self) -> dict:
        return {
            **super().describe(),
            "pool_size": self.pool_size,
            "length": self.length,
            "layers": self.layers,
            "components_per_task": self.per_task if self.sequence is not None else None,
            "init": "orthonormal, all components at the start (paper)"
            if self.init == "start"
            else "orthonormal, each task's components when it starts (released code)",
            "ortho_weight": self.ortho_weight,
            "placement": "prefix tuning: first half of the prompt to the keys, second half to the values",
        }
