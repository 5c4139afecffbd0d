"""RanPAC (McDonnell et al., "RanPAC: random projections and pre-trained models for continual
learning", NeurIPS 2023)."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from torch import nn
from torch.nn import functional as F

from clight.data.task import Task
from clight.methods.prototypes import adaptation as first_session
from clight.methods.prototypes.heads import RandomProjectionHead
from clight.methods.prototypes.method import ClassStatisticsMethod
from clight.methods.prototypes.ridge import PAPER_GRID, ridge_solution, validation_errors, validation_rows
from clight.methods.prototypes.statistics import sum_across_ranks, training_features


class RanPAC(ClassStatisticsMethod):
    """A ridge classifier on randomly projected frozen features, from accumulated statistics.

    Features ``f`` (width L) are projected by a frozen Gaussian matrix to ``projection_dim`` (M)
    dimensions with a ReLU: ``h = relu(f W_rand)``. After each task ``G += sum h h^T`` and
    ``Q += sum h y^T`` (one-hot ``y``) over its training samples, and the head becomes
    ``W_o = (G + lambda I)^{-1} Q``. ``ridge``: ``"validation"`` chooses ``lambda`` at every task from
    ``ridge_grid`` by the validation error of a fit on the task's other rows (``validation_fraction``
    held out), as the paper and its released code do; a number fixes it. ``adaptation``: Phase 1,
    the backbone itself adapted on the first task (``adapter`` on ViTs in the paper, ``ssf``,
    ``finetune``), then frozen; ``None`` (default) uses the pretrained backbone as it is.
    """

    state_layout = {"gram": "reduced", "class_features": "reduced", "history": "replicated"}
    unshardable = "not yet tested with sharded parameters (docs/scaling.md lists the methods that are)"

    salt = 0x52504143  # "RPAC"

    def __init__(
        self,
        projection_dim: int = 10000,
        ridge: Union[str, float] = "validation",
        ridge_grid: Sequence[float] = PAPER_GRID,
        validation_fraction: float = 0.2,
        adaptation: Optional[first_session.Adaptation] = None,
    ) -> None:
        super().__init__(adaptation)
        if projection_dim < 0:
            raise ValueError(f"RanPAC.projection_dim must be >= 0 (0: no projection), got {projection_dim}")
        if isinstance(ridge, str) and ridge != "validation":
            raise ValueError(f"RanPAC.ridge must be 'validation' or a number >= 0, got {ridge!r}")
        if not isinstance(ridge, str) and not ridge >= 0:
            raise ValueError(f"RanPAC.ridge must be 'validation' or a number >= 0, got {ridge}")
        if not ridge_grid or any(not r > 0 for r in ridge_grid):
            raise ValueError(f"RanPAC.ridge_grid must be positive numbers, got {list(ridge_grid)}")
        if not 0 < validation_fraction < 1:
            raise ValueError(f"RanPAC.validation_fraction must be in (0, 1), got {validation_fraction}")
        self.projection_dim, self.ridge = projection_dim, ridge
        self.ridge_grid, self.validation_fraction = [float(r) for r in ridge_grid], validation_fraction
        self.gram = torch.zeros(0, 0, dtype=torch.float64)
        self.class_features = torch.zeros(0, 0, dtype=torch.float64)

    def make_classifier(self, num_features: int, num_classes: int, generator: torch.Generator) -> nn.Module:
        head = RandomProjectionHead(num_features, num_classes, self.projection_dim, generator)
        if self.gram.numel() == 0:
            self.gram = torch.zeros(head.width, head.width, dtype=torch.float64)
            self.class_features = torch.zeros(head.width, num_classes, dtype=torch.float64)
        return head

    def learn_task(self, module: Any, task: Task) -> None:
        head, device = self.classifier(module), module.device
        width, num_classes = self.class_features.shape
        held_out = validation_rows(len(task.train), self.validation_fraction, self._context.generator(self.salt, 1, task.index))
        held_out = held_out.to(device)
        # [fitting rows, validation rows]: G and Q of each part of this task
        grams = torch.zeros(2, width, width, dtype=torch.float64, device=device)
        class_features = torch.zeros(2, width, num_classes, dtype=torch.float64, device=device)
        for rows, features, targets in training_features(module, self._datamodule, task):
            projected = head.project(features.float()).double()
            onehot = F.one_hot(targets, num_classes).double()
            for part, mask in enumerate((~held_out[rows], held_out[rows])):
                grams[part] += projected[mask].T @ projected[mask]
                class_features[part] += projected[mask].T @ onehot[mask]
        val_samples = torch.tensor(float(held_out.sum()), dtype=torch.float64, device=device)  # the same on every rank
        grams, class_features = sum_across_ranks(grams, class_features)
        record: dict = {"task": task.index}
        if self.ridge == "validation":
            errors = validation_errors(
                grams[0], class_features[0], grams[1], class_features[1], int(val_samples), self.ridge_grid
            )
            ridge = self.ridge_grid[min(range(len(errors)), key=errors.__getitem__)]
            record["validation_mse"] = errors
        else:
            ridge = float(self.ridge)
        self.gram = self.gram + grams.sum(0).cpu()
        self.class_features = self.class_features + class_features.sum(0).cpu()
        weights = ridge_solution(self.gram.to(device), self.class_features.to(device), ridge)
        with torch.no_grad():
            head.weight.copy_(weights.T.to(head.weight))
        self.history.append({**record, "ridge": ridge})

    def state_dict(self) -> dict:
        return {"gram": self.gram, "class_features": self.class_features, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.gram, self.class_features = state["gram"].clone(), state["class_features"].clone()
        self.history = list(state.get("history", []))

    def describe(self) -> dict:
        return {
            **super().describe(),
            "method": "RanPAC (McDonnell et al., NeurIPS 2023)",
            "projection_dim": self.projection_dim,
            "projection": "relu(f W_rand), W_rand ~ N(0, 1), frozen" if self.projection_dim else "none (h = f)",
            "ridge": (
                f"chosen per task from {len(self.ridge_grid)} values ({min(self.ridge_grid):g} ... {max(self.ridge_grid):g}) "
                f"by the validation MSE of a fit on the task's other rows ({self.validation_fraction:g} held out): the "
                "released code's optimise_ridge_parameter, with a seeded row split"
                if self.ridge == "validation"
                else f"fixed at {self.ridge:g}"
            ),
            "statistics_dtype": "float64",
        }
