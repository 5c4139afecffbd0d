"""ContinualClassifier: a backbone with task-incremental heads or one class-incremental head."""

from __future__ import annotations

from typing import Callable, Optional, Protocol, Sequence, cast, runtime_checkable

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _NormBase

from clight.data.task import SequenceInfo, Task
from clight.models.backbones import MLP, feature_width
from clight.models.module import ContinualModule, default_optimizer


@runtime_checkable
class SizesItself(Protocol):
    """A backbone that builds its layers once it knows the input shape (``MLP``, ``SmallCNN``)."""

    def adapt_to(self, input_shape: Sequence[int]) -> None: ...


class ContinualClassifier(ContinualModule):
    """Image (or feature) classifier over a task sequence.

    task_incremental: one linear head per task, added at task start; a sample is scored by its
    own task's head. class/domain incremental: one head over all classes of the sequence whose
    outputs for classes not yet seen are masked out (set to -inf) in training and evaluation.
    ``train_backbone=False`` freezes the backbone (a linear probe). Earlier tasks' heads are
    frozen while a later task trains unless ``train_old_heads`` (useful with replay); this also
    keeps every trainable parameter in use, as DDP requires.
    """

    seen_mask: torch.Tensor  # buffers
    local_index: torch.Tensor

    def __init__(
        self,
        backbone: Optional[nn.Module] = None,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        train_backbone: bool = True,
        train_old_heads: bool = False,
    ) -> None:
        super().__init__(optimizer, lr_scheduler)
        self.backbone = backbone if backbone is not None else MLP()
        feature_width(self.backbone)  # checked before anything else
        self.train_backbone = train_backbone
        self.train_old_heads = train_old_heads
        self.heads = nn.ModuleDict()
        self._class_indices: dict = {}
        self.register_buffer("seen_mask", torch.zeros(0, dtype=torch.bool), persistent=True)
        self.register_buffer("local_index", torch.zeros(0, dtype=torch.long), persistent=True)
        self._unseen: Optional[tuple[torch.Tensor, int, Optional[torch.Tensor]]] = None  # see _unseen_classes

    @property
    def multi_head(self) -> bool:
        return self.sequence is not None and self.sequence.setting == "task_incremental"

    def setup_sequence(self, info: SequenceInfo) -> None:
        super().setup_sequence(info)
        self._class_indices = {}
        if isinstance(self.backbone, SizesItself) and info.input_shape is not None:
            self.backbone.adapt_to(info.input_shape)
        self.seen_mask = torch.zeros(info.num_classes, dtype=torch.bool, device=self.seen_mask.device)
        local = torch.zeros(info.num_classes, dtype=torch.long)
        for classes in info.task_classes:
            local[torch.tensor(classes)] = torch.arange(len(classes))
        self.local_index = local.to(self.local_index.device)
        if not self.multi_head and "all" not in self.heads:
            self.heads["all"] = nn.Linear(feature_width(self.backbone), info.num_classes)
        self.backbone.requires_grad_(self.train_backbone)

    def on_task_start(self, task: Task) -> None:
        super().on_task_start(task)
        if self.multi_head:
            if str(task.index) not in self.heads:
                self.heads[str(task.index)] = nn.Linear(feature_width(self.backbone), task.num_classes).to(self.device)
            for key, head in self.heads.items():
                head.requires_grad_(key == str(task.index) or self.train_old_heads)
        self.seen_mask[torch.tensor(task.classes, device=self.seen_mask.device)] = True

    def train(self, mode: bool = True) -> "ContinualClassifier":
        """Norm layers with nothing trainable stay in eval mode, so a frozen backbone's
        BatchNorm statistics never drift (a method's per-task norms, being trainable, do train)."""
        super().train(mode)
        if mode and not self.train_backbone:
            for module in self.backbone.modules():
                if isinstance(module, _NormBase) and not any(p.requires_grad for p in module.parameters()):
                    module.eval()
        return self

    def can_evaluate(self, task_id: int) -> bool:
        """A task-incremental model has no head for a task it has not started."""
        return not self.multi_head or str(task_id) in self.heads

    def features(self, x: torch.Tensor, task_id: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The backbone's output (shared by all tasks here; CLR routes through task ``task_id``)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor, task_id: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Class-incremental: masked logits over all classes. Task-incremental: each sample's
        logits from its own task's head (``task_id`` required), padded with -inf to equal width."""
        return self.logits(self.features(x, task_id), task_id)

    def logits(self, features: torch.Tensor, task_id: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.multi_head:
            return self._mask_unseen(self.heads["all"](features))
        if task_id is None:
            raise ValueError("a task-incremental model needs the task id of every sample")
        # every head on every sample, then each sample's own row: no data-dependent branching,
        # so the same code runs batched under torch.func (EWC's per-sample gradients)
        heads = [cast(nn.Linear, head) for head in self.heads.values()]
        width = max(head.out_features for head in heads)
        stacked = torch.stack([F.pad(head(features), (0, width - head.out_features), value=float("-inf")) for head in heads])
        return stacked[self._head_position(task_id), torch.arange(len(features), device=features.device)]

    def _mask_unseen(self, raw_logits: torch.Tensor) -> torch.Tensor:
        unseen = self._unseen_classes()
        return raw_logits if unseen is None else raw_logits.masked_fill(unseen, float("-inf"))

    def _unseen_classes(self) -> Optional[torch.Tensor]:
        """``~seen_mask``, or None once every class is seen (a domain-incremental sequence: no
        mask at all), worked out again only when the mask changed: another tensor (a new
        sequence, a move to a device) or the same one changed in place (its version counter)."""
        seen = self.seen_mask
        try:
            version = seen._version
        except RuntimeError:  # an inference-mode tensor keeps no version: no caching
            return ~seen
        cached = self._unseen
        if cached is None or cached[0] is not seen or cached[1] != version:
            unseen = ~seen
            cached = self._unseen = (seen, version, unseen if bool(unseen.any()) else None)
        return cached[2]

    def _head_position(self, task_id: torch.Tensor) -> torch.Tensor:
        keys = [int(k) for k in self.heads.keys()]
        lookup = torch.full((max(keys) + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(keys)] = torch.arange(len(keys))
        return lookup.to(task_id.device)[task_id]

    def distillation_logits(self, features: torch.Tensor, tasks: Sequence[int]) -> list[torch.Tensor]:
        """Raw logits of ``tasks`` grouped as the heads group them: one tensor per task head
        (task-incremental), or one tensor over all those tasks' classes (single head)."""
        if self.multi_head:
            return [self.heads[str(t)](features) for t in tasks]
        return [self.heads["all"](features).index_select(1, self._class_index(tasks, features.device))]

    def _class_index(self, tasks: Sequence[int], device: torch.device) -> torch.Tensor:
        """The sorted classes of ``tasks`` as an index tensor, built once per set of tasks (LwF asks every step)."""
        key = (tuple(tasks), device)
        if key not in self._class_indices:
            assert self.sequence is not None, "setup_sequence comes first"
            classes = sorted({c for t in tasks for c in self.sequence.task_classes[t]})
            self._class_indices[key] = torch.tensor(classes, device=device)
        return self._class_indices[key]

    def output_logits(self, batch: dict) -> torch.Tensor:
        """Logits of every sample (masked as in training), no labels needed."""
        return self.logits(self.features(batch["input"], batch["task_id"]), batch["task_id"])

    def _targets(self, batch: dict) -> torch.Tensor:
        return self.local_index[batch["target"]] if self.multi_head else batch["target"]

    def task_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        features = self.features(batch["input"], batch["task_id"])
        logits = self.logits(features, batch["task_id"])
        loss = F.cross_entropy(logits, self._targets(batch))
        return loss, {"features": features, "logits": logits}

    def set_evaluation_scores(self, scores: Optional[Callable[[torch.Tensor], torch.Tensor]]) -> None:
        """Score classes in evaluation with ``scores(features) -> [B, num_classes]`` instead of the
        head (a method's classifier: iCaRL's nearest mean of exemplars); ``None`` restores the head.
        Single-head models only: a task-incremental model scores each sample with its task's head."""
        if scores is not None and self.multi_head:
            raise ValueError("evaluation scores replace the single head; a task-incremental model has one head per task")
        self.evaluation_scores = scores

    @torch.no_grad()
    def evaluation_counts(self, batch: dict) -> dict[str, torch.Tensor]:
        features = self.features(batch["input"], batch["task_id"])
        if self.multi_head:
            logits = self.logits(features, batch["task_id"])
        else:  # the head once, for both the class-incremental and the task-aware count
            raw = self.heads["all"](features) if self.evaluation_scores is None else self.evaluation_scores(features)
            logits = self._mask_unseen(raw)
        correct = (logits.argmax(1) == self._targets(batch)).sum()
        counts = {"correct": correct, "total": torch.tensor(len(logits), device=logits.device)}
        if not self.multi_head:
            counts["correct_task_aware"] = self._task_aware_correct(raw, batch)
        return counts

    def _task_aware_correct(self, raw_logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """Task-incremental accuracy of a single-head model: argmax within the sample's task."""
        key = ("task_classes", raw_logits.device)
        if key not in self._class_indices:  # [task, class]: whether the class belongs to the task
            assert self.sequence is not None, "setup_sequence comes first"
            table = torch.zeros(len(self.sequence.task_classes), raw_logits.shape[1], dtype=torch.bool)
            for t, classes in enumerate(self.sequence.task_classes):
                table[t, classes] = True
            self._class_indices[key] = table.to(raw_logits.device)
        allowed = self._class_indices[key].index_select(0, batch["task_id"])
        return (raw_logits.masked_fill(~allowed, float("-inf")).argmax(1) == batch["target"]).sum()

    def describe(self) -> dict:
        info = super().describe()
        info.update({"backbone": type(self.backbone).__name__, "train_backbone": self.train_backbone, "heads": list(self.heads)})
        return info
