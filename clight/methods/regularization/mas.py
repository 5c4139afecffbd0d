"""Memory aware synapses (Aljundi et al., ECCV 2018)."""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch

from clight.choices import check_choice
from clight.contract import LabelFreeOutputs, RunContext
from clight.data.task import Task
from clight.distributed import global_rank, sum_across_ranks, world_size
from clight.methods.base import ContinualCallback
from clight.methods.regularization.fisher import fetch_samples, per_sample_sum
from clight.methods.regularization.linear_sums import abs_gradient_sums
from clight.methods.regularization.quadratic import QuadraticPenalty

MASImportance = Literal["per_sample", "batch"]
MASAccumulate = Literal["sum", "average"]


def squared_output_norm(module: Any, batch: dict) -> torch.Tensor:
    """Mean over the batch of ``||F(x)||^2``, ``F`` the output logits; classes a single head masks
    out (-inf, not seen yet) are not outputs."""
    return _squared_norms(module, batch).mean()


def _squared_norms(module: Any, batch: dict) -> torch.Tensor:
    logits = module.output_logits(batch)
    return torch.where(torch.isfinite(logits), logits, torch.zeros_like(logits)).pow(2).sum(-1)


class MAS(ContinualCallback):
    """Memory aware synapses: a parameter matters as much as the output moves with it.

    After each task, ``Omega_t[i] = mean over the task's training samples of |d ||F(x)||^2 / d theta_i|``
    (``importance="per_sample"``, the paper; ``"batch"``: ``|d mean_batch ||F||^2 / d theta|``
    averaged over batches of ``batch_size``, as the authors' code and Avalanche compute it).
    ``accumulate="sum"`` (paper) adds it to the importance so far; ``"average"`` keeps
    ``alpha * Omega + (1 - alpha) * Omega_t`` (Avalanche). No labels are used. Penalty:
    ``lambda_ * sum_i Omega[i] (theta_i - theta_i(end of previous task))^2``; ``lambda_ = 1`` as
    in the paper. ``samples`` caps the samples used (the first ones of the task). The samples are
    shared out across ranks and the sums reduced, so every rank holds the same importance.
    """

    state_layout = {"importance": "sharded", "anchor": "sharded"}
    unshardable = "its importance comes from forward hooks on linear layers and torch.func per-sample gradients, which do not run through FSDP's sharded parameters"

    module_protocol = LabelFreeOutputs

    def __init__(
        self,
        lambda_: float = 1.0,
        importance: MASImportance = "per_sample",
        accumulate: MASAccumulate = "sum",
        alpha: float = 0.5,
        samples: Optional[int] = None,
        batch_size: int = 64,
    ) -> None:
        check_choice("MAS.importance", importance, MASImportance)
        check_choice("MAS.accumulate", accumulate, MASAccumulate)
        if lambda_ < 0 or not 0 <= alpha <= 1 or (samples is not None and samples < 1) or batch_size < 1:
            raise ValueError(
                f"MAS needs lambda_ >= 0, 0 <= alpha <= 1, samples >= 1 (or null) and batch_size >= 1; "
                f"got {lambda_}, {alpha}, {samples}, {batch_size}"
            )
        self.lambda_, self.importance, self.accumulate, self.alpha = lambda_, importance, accumulate, alpha
        self.samples, self.batch_size = samples, batch_size
        self.quadratic = QuadraticPenalty()
        self.path = "not computed yet"

    def setup_sequence(self, module: Any, datamodule: Any, context: RunContext) -> None:
        module.add_loss_term("mas", self.penalty)

    def penalty(self, module: Any, batch: dict, outputs: dict) -> torch.Tensor:
        return self.lambda_ * self.quadratic.value(module)

    def on_task_start(self, module: Any, task: Task) -> None:
        self.quadratic.invalidate()  # the trainable parameters may change between tasks

    def on_task_end(self, module: Any, task: Task) -> None:
        new = self.task_importance(module, task.train)
        old = self.quadratic.importance
        for name, value in new.items():
            if name not in old:
                old[name] = value
            elif self.accumulate == "sum":
                old[name] = old[name].to(value.device) + value
            else:
                old[name] = self.alpha * old[name].to(value.device) + (1 - self.alpha) * value
        self.quadratic.set_anchor(module)

    def task_importance(self, module: Any, dataset: Any) -> dict[str, torch.Tensor]:
        """This task's importance of every trainable parameter, the same on every rank."""
        n = len(dataset) if self.samples is None else min(self.samples, len(dataset))
        rank, world = global_rank(), world_size()
        if self.importance == "per_sample":
            total, self.path = self._per_sample_sums(module, dataset, range(rank, n, world))
            count = n
        else:
            starts = list(range(0, n, self.batch_size))
            total = self._batch_sums(module, dataset, [range(s, min(n, s + self.batch_size)) for s in starts[rank::world]])
            count, self.path = len(starts), f"one backward pass per batch of {self.batch_size}"
        return {name: sum_across_ranks(value) / count for name, value in total.items()}

    @staticmethod
    def _per_sample_sums(module: Any, dataset: Any, rows: range) -> tuple[dict[str, torch.Tensor], str]:
        """Linear layers from one backward pass per chunk (``abs_gradient_sums``), the rest from
        per-sample gradients."""
        total = abs_gradient_sums(module, dataset, rows, lambda m, b: _squared_norms(m, b).sum())
        rest = {n: p for n, p in module.named_parameters() if p.requires_grad and n not in total}
        path = "linear layers: |delta|^T |a| from one backward pass per chunk"
        if rest:
            others, how = per_sample_sum(module, dataset, rows, squared_output_norm, torch.abs, params=rest)
            total.update(others)
            path += f"; other parameters: {how}"
        return total, path

    @staticmethod
    def _batch_sums(module: Any, dataset: Any, batches: list[range]) -> dict[str, torch.Tensor]:
        params = {n: p for n, p in module.named_parameters() if p.requires_grad}
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        was_training = module.training
        module.eval()
        try:
            for rows in batches:
                grads = torch.autograd.grad(
                    squared_output_norm(module, fetch_samples(dataset, list(rows), module.device)),
                    list(params.values()),
                    allow_unused=True,
                )
                for (name, _), grad in zip(params.items(), grads):
                    if grad is not None:
                        total[name] += grad.abs()
        finally:
            module.train(was_training)
        return total

    def describe(self) -> dict:
        return {
            "class": "MAS",
            "lambda": self.lambda_,
            "importance": self.importance,
            "accumulate": self.accumulate,
            "alpha": self.alpha if self.accumulate == "average" else None,
            "samples": self.samples,
            "batch_size": self.batch_size if self.importance == "batch" else None,
            "gradients": self.path,
        }

    def state_dict(self) -> dict:
        return self.quadratic.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.quadratic.load_state_dict(state)
