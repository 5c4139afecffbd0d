"""iCaRL (Rebuffi, Kolesnikov, Sperl & Lampert, CVPR 2017)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch.nn import functional as F

from clight.choices import check_choice
from clight.contract import ExemplarClassifier, MemoryData, RunContext
from clight.data.replay import ReplayMemory
from clight.data.task import SequenceInfo, Task
from clight.distributed import broadcast_from_rank_zero, broadcast_from_rank_zero_
from clight.methods.base import ContinualCallback
from clight.methods.icarl.herding import HERDING, Herding, nearest_mean_scores, normalized
from clight.methods.previous_model import PreviousModel
from clight.methods.regularization.fisher import fetch_samples


def icarl_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    new_classes: torch.Tensor,
    old_classes: torch.Tensor,
    old_logits: Optional[torch.Tensor],
) -> torch.Tensor:
    """Sigmoid binary cross-entropy over the classes seen so far, averaged over samples and
    classes: a new class's target is whether it is the sample's label, an old class's target is
    the previous model's sigmoid output (the distillation)."""
    wanted = (target.unsqueeze(1) == new_classes.unsqueeze(0)).to(logits.dtype)
    columns, targets = new_classes, wanted
    if len(old_classes):
        columns = torch.cat([old_classes, new_classes])
        targets = torch.cat([torch.sigmoid(old_logits.index_select(1, old_classes)), wanted], 1)
    return F.binary_cross_entropy_with_logits(logits.index_select(1, columns), targets)


class ICaRL(ContinualCallback):
    """iCaRL: herding exemplars, sigmoid distillation, nearest-mean-of-exemplars classification.

    Training set of every task: its data and the exemplars together, shuffled (the data module's
    ``uniform`` replay). Loss (it replaces the model's cross-entropy): ``icarl_loss`` over the
    classes seen so far, with the previous model (a frozen copy taken at the last task's end) as
    the distillation target for the old classes. After each task, with ``K = memory_size`` and
    ``t`` classes seen, every old class keeps the first ``m = K // t`` exemplars of its herding
    order and every new class gets ``m`` by herding over its training samples' L2-normalised
    features (``herding="paper"``: Algorithm 4; ``"released_code"``: the authors' code).
    Evaluation: the class whose exemplars' mean normalised feature (renormalised) is nearest.
    Class-incremental sequences and single-head classifiers only. The exemplars and the class
    means are computed on every rank and rank 0's are kept, so all ranks agree.
    """

    state_layout = {
        "entries": "replicated",
        "labels": "replicated",
        "seen": "replicated",
        "old_classes": "replicated",
        "previous": "sharded",
        "means": "replicated",
        "has_mean": "replicated",
    }
    unshardable = "not yet tested with sharded parameters (docs/scaling.md lists the methods that are)"

    settings = ("class_incremental",)
    module_protocol = ExemplarClassifier
    data_protocol = MemoryData

    def __init__(self, memory_size: int = 2000, herding: Herding = "paper", batch_size: int = 256) -> None:
        check_choice("ICaRL.herding", herding, Herding)
        if memory_size < 1 or batch_size < 1:
            raise ValueError(f"ICaRL needs memory_size >= 1 and batch_size >= 1, got {memory_size}, {batch_size}")
        self.memory_size, self.herding, self.batch_size = memory_size, herding, batch_size
        self.memory = ReplayMemory(memory_size)  # entries in class order, each class in herding order
        self.previous = PreviousModel()
        self.old_classes: list[int] = []
        self.new_classes: list[int] = []
        self.means: Optional[torch.Tensor] = None  # [classes, features]
        self.has_mean: Optional[torch.Tensor] = None
        self._module: Any = None
        self._datamodule: Any = None
        self._indices: dict = {}

    def check_compatible(self, module: Any, datamodule: Any, info: SequenceInfo) -> None:
        super().check_compatible(module, datamodule, info)
        datamodule.claim_training_memory(self, "ICaRL")

    def setup_sequence(self, module: Any, datamodule: Any, context: RunContext) -> None:
        self._module, self._datamodule = module, datamodule
        module.replace_task_loss("icarl", self.loss)
        datamodule.replay_from("ICaRL", self.memory, "uniform")

    # -- training ---------------------------------------------------------------------------------
    def on_task_start(self, module: Any, task: Task) -> None:
        module.set_evaluation_scores(None)  # the head scores validation while the task trains
        self.previous.on_task_start(module)
        self.new_classes = list(task.classes)
        self._indices = {}

    def _index(self, classes: list[int], device: torch.device) -> torch.Tensor:
        key = (tuple(classes), device)
        if key not in self._indices:
            self._indices[key] = torch.tensor(classes, dtype=torch.long, device=device)
        return self._indices[key]

    def loss(self, module: Any, batch: dict, outputs: dict) -> torch.Tensor:
        logits, device = outputs["logits"], outputs["logits"].device
        old_logits = None
        if self.old_classes:
            with torch.no_grad():
                old_logits = self.previous.on(device).output_logits(batch)
        return icarl_loss(
            logits, batch["target"], self._index(self.new_classes, device), self._index(self.old_classes, device), old_logits
        )

    # -- exemplars and class means ------------------------------------------------------------------
    def on_task_end(self, module: Any, task: Task) -> None:
        self.previous.take(module)
        self.old_classes = sorted(set(self.old_classes) | set(task.classes))
        per_class = self.memory_size // len(self.old_classes)
        entries, labels = [], []
        for c in sorted(set(self.memory.labels.tolist())):  # old classes: the first m of their order
            rows = (self.memory.labels == c).nonzero().flatten()[:per_class]
            entries.append(self.memory.entries[rows])
            labels.append(self.memory.labels[rows])
        targets = task.train.targets
        for c in task.classes:
            candidates = (targets == c).nonzero().flatten()
            features = normalized(self._features(module, task.train, candidates.tolist()))
            order = broadcast_from_rank_zero(HERDING[self.herding](features, per_class))
            chosen = candidates[torch.tensor(order, dtype=torch.long)]
            entries.append(torch.stack([torch.full_like(chosen, task.index), chosen], 1))
            labels.append(torch.full_like(chosen, c))
        self.memory.entries, self.memory.labels = torch.cat(entries), torch.cat(labels)
        self.memory.seen += len(targets)
        self._class_means(module)

    def _features(self, module: Any, dataset: Any, rows: list[int]) -> torch.Tensor:
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                parts = []
                for start in range(0, len(rows), self.batch_size):
                    batch = fetch_samples(dataset, rows[start : start + self.batch_size], module.device)
                    parts.append(module.features(module.model_input(batch), batch.get("task_id")))
        finally:
            module.train(was_training)
        return torch.cat(parts)

    def _class_means(self, module: Any) -> None:
        """Each class's mean normalised exemplar feature, renormalised; rank 0's on every rank."""
        exemplars = self._datamodule.memory_dataset(self.memory.entries)
        features = normalized(self._features(module, exemplars, list(range(len(exemplars)))))
        num_classes = module.sequence.num_classes
        means = features.new_zeros(num_classes, features.shape[1])
        means.index_add_(0, self.memory.labels.to(features.device), features)
        self.means = broadcast_from_rank_zero_(normalized(means))
        self.has_mean = torch.zeros(num_classes, dtype=torch.bool, device=features.device)
        self.has_mean[self.memory.labels.unique().to(features.device)] = True
        module.set_evaluation_scores(self.scores)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        return nearest_mean_scores(features, self.means.to(features.device), self.has_mean.to(features.device))

    # -- the record -----------------------------------------------------------------------------------
    def describe(self) -> dict:
        return {
            "class": "ICaRL",
            "memory_size": self.memory_size,
            "herding": self.herding,
            "exemplars_per_class": self.memory_size // len(self.old_classes) if self.old_classes else None,
            "loss": "sigmoid binary cross-entropy over the classes seen, old classes distilled (replaces the cross-entropy)",
            "classifier": "nearest mean of exemplars",
        }

    def state_dict(self) -> dict:
        state = {**self.memory.state_dict(), "old_classes": list(self.old_classes), **self.previous.state_dict()}
        if self.means is not None:
            state.update(means=self.means, has_mean=self.has_mean)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.memory.load_state_dict(state)
        self.old_classes = list(state["old_classes"])
        self.previous.load_state_dict(state)
        if "means" in state:
            self.means, self.has_mean = state["means"].clone(), state["has_mean"].clone()
            if self._module is not None:
                self._module.set_evaluation_scores(self.scores)
