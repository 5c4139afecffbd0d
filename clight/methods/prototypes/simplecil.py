"""SimpleCIL and APER (Zhou et al., "Revisiting class-incremental learning with pre-trained models:
generalizability and adaptivity are all you need", IJCV 2024)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from clight.data.task import Task
from clight.methods.prototypes import adaptation as first_session
from clight.methods.prototypes.heads import CosinePrototypeHead
from clight.methods.prototypes.method import ClassStatisticsMethod
from clight.methods.prototypes.statistics import sum_across_ranks, training_features


class SimpleCIL(ClassStatisticsMethod):
    """A cosine classifier over class prototypes of a frozen pretrained backbone.

    After each task, every class of the task gets its prototype: the mean feature of its training
    samples (summed over every task it occurs in, for domain-incremental sequences). A sample is
    scored by the cosine similarity of its feature to every prototype. Nothing is trained.
    ``APER`` adds first-session adaptation.
    """

    state_layout = {"sums": "reduced", "counts": "reduced", "history": "replicated"}
    unshardable = "not yet tested with sharded parameters (docs/scaling.md lists the methods that are)"

    salt = 0x53434C  # "SCL"

    def __init__(self) -> None:
        self._init_statistics(None)

    def _init_statistics(self, adaptation: Optional[first_session.Adaptation]) -> None:
        ClassStatisticsMethod.__init__(self, adaptation)
        self.sums = torch.zeros(0, dtype=torch.float64)
        self.counts = torch.zeros(0, dtype=torch.float64)

    def make_classifier(self, num_features: int, num_classes: int, generator: torch.Generator) -> nn.Module:
        if self.sums.numel() == 0:
            self.sums = torch.zeros(num_classes, num_features, dtype=torch.float64)
            self.counts = torch.zeros(num_classes, dtype=torch.float64)
        return CosinePrototypeHead(num_features, num_classes)

    def learn_task(self, module: Any, task: Task) -> None:
        device = module.device
        sums, counts = torch.zeros_like(self.sums, device=device), torch.zeros_like(self.counts, device=device)
        for _, features, targets in training_features(module, self._datamodule, task):
            sums.index_add_(0, targets, features)
            counts += torch.bincount(targets, minlength=len(counts)).to(counts.dtype)
        sums, counts = sum_across_ranks(sums, counts)
        self.sums, self.counts = self.sums + sums.cpu(), self.counts + counts.cpu()
        seen = self.counts > 0
        head = self.classifier(module)
        with torch.no_grad():
            head.prototypes[seen.to(device)] = (self.sums[seen] / self.counts[seen, None]).to(head.prototypes)
        self.history.append({"task": task.index, "samples": int(counts.sum())})

    def state_dict(self) -> dict:
        return {"sums": self.sums, "counts": self.counts, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.counts = state["sums"].clone(), state["counts"].clone()
        self.history = list(state.get("history", []))

    def describe(self) -> dict:
        return {
            **super().describe(),
            "method": "SimpleCIL (Zhou et al., IJCV 2024)" if self.adaptation is None else "APER (Zhou et al., IJCV 2024)",
            "classifier": "cosine similarity to class-mean features (prototypes)",
            "features": "[pretrained, adapted] concatenated" if self.adaptation else "the frozen backbone's",
        }


class APER(SimpleCIL):
    """SimpleCIL after first-session adaptation (APER, the paper's ADAM): a copy of the backbone is
    adapted on the first task (``finetune``: all its weights; ``ssf``: scale-and-shift parameters;
    ``adapter``: AdaptFormer adapters, vision transformers only) with a cosine head trained by
    cross-entropy, then frozen; prototypes are means of the concatenated features
    ``[pretrained(x), adapted(x)]`` of every task, the first included. The first task trains with the
    model's optimizer for the trainer's epochs; every later task is gradient-free."""

    concatenate_adapted = True

    def __init__(self, adaptation: first_session.Adaptation = "finetune") -> None:
        if adaptation is None:
            raise ValueError("APER needs an adaptation (finetune, ssf or adapter); without one it is SimpleCIL")
        self._init_statistics(adaptation)
