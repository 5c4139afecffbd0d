"""CLRClassifier: a frozen, shared backbone reprogrammed per task (Ge et al., ICCV 2023)."""

from __future__ import annotations

import re
from typing import Optional, Sequence, Union

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from clight.data.task import SequenceInfo, Task
from clight.methods.reprogramming import injection as clr_inject
from clight.methods.reprogramming.layers import ChannelAffine, ReprogrammedConv, TaskKeyedLayer, TaskNorm
from clight.models.backbones import feature_width
from clight.models.classifier import ContinualClassifier
from clight.models.module import ContinualModule, default_optimizer

TaskRef = Union[int, str]


def clr_step_schedule(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The released code's schedule: StepLR, step 20 epochs, gamma 0.1."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.1)


def clr_norm_penalty(module: ContinualModule, batch: dict, outputs: dict) -> torch.Tensor:
    """``norm_penalty * sum over trainable tensors of ||theta||_2`` (the norm, not its square)."""
    assert isinstance(module, CLRClassifier), "a loss term of CLRClassifier"
    params = module.trainable_parameters()
    return module.norm_penalty * torch.stack([p.norm(2) for p in params]).sum()


class CLRClassifier(ContinualClassifier):
    """Channel-wise lightweight reprogramming, task-incremental.

    The backbone is frozen and shared. Every task gets, keyed by its index, its own
    reprogramming kernels (``variant``: ``"CLR"``, ``"CLR-full"``, ``"CLR+1x1"``, clight's
    ``"1x1-only"``, or clight's transformer extension ``"affine"``; see
    ``clight.methods.reprogramming.injection``), its own normalisation layers (affine parameters and
    running statistics, ``per_task_norm``) and its own linear head. ``on_task_start`` adds the
    task's set and makes only it trainable; a batch is run through the set of its ``task_id``
    (a batch mixing tasks is split by task and each part run through its own set). Loss:
    cross-entropy + ``norm_penalty`` * sum of the L2 norms of the trainable tensors, logged
    as ``train/clr_norm``. After task t, nothing of task t changes again: BWT is exactly 0.
    """

    settings = ("task_incremental",)
    settings_reason = " (CLR: each task has its own reprogramming and head, chosen by the task id at test time)"

    unshardable = "it adds each task's kernels inside layers that are already sharded, and reads parameters by task directly"

    def __init__(
        self,
        backbone: Optional[nn.Module] = None,
        variant: str = "CLR",
        kernel_size: Optional[int] = None,
        per_task_norm: bool = True,
        linear_targets: Optional[Sequence[str]] = None,
        norm_penalty: float = 1e-5,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: Optional[LRSchedulerCallable] = clr_step_schedule,
    ) -> None:
        super().__init__(backbone, optimizer, lr_scheduler, train_backbone=False)
        if norm_penalty < 0:
            raise ValueError(f"CLRClassifier.norm_penalty must be >= 0, got {norm_penalty}")
        self.variant = clr_inject.canonical_variant(variant)
        self.kernel_size = kernel_size
        self.per_task_norm = per_task_norm
        self.linear_targets = list(linear_targets) if linear_targets else list(clr_inject.DEFAULT_LINEAR_TARGETS)
        self.norm_penalty = norm_penalty
        self.injected: list[str] = []
        if norm_penalty > 0:
            self.add_loss_term("clr_norm", clr_norm_penalty)
        self._inject_if_built()

    # -- building ------------------------------------------------------------------------------
    def _inject_if_built(self) -> None:
        """Wrap the backbone's layers once they exist (lazy backbones are built in setup_sequence)."""
        if self.injected:
            return
        layer = nn.Linear if self.variant == "affine" else nn.Conv2d
        if not any(isinstance(m, layer) for m in self.backbone.modules()):
            return
        self.injected = clr_inject.inject(self.backbone, self.variant, self.kernel_size, self.per_task_norm, self.linear_targets)

    def setup_sequence(self, info: SequenceInfo) -> None:
        super().setup_sequence(info)
        self._inject_if_built()
        if not self.injected:
            raise ValueError(f"CLR variant {self.variant!r} found nothing to reprogram in {type(self.backbone).__name__}")

    @property
    def task_layers(self) -> list[TaskKeyedLayer]:
        return clr_inject.task_layers(self.backbone)

    def task_keys(self) -> list[str]:
        return list(self.heads.keys())

    def add_task(self, task: TaskRef, num_classes: int) -> None:
        """Create task ``task``'s kernels, norms (from the frozen backbone's) and head, if missing."""
        key = str(task)
        self._inject_if_built()
        layers = self.task_layers
        if layers and key not in layers[0].task_keys():
            clr_inject.add_task(self.backbone, key)
        if key not in self.heads:
            self.heads[key] = nn.Linear(feature_width(self.backbone), num_classes).to(self.device)

    def remove_task(self, task: TaskRef) -> None:
        key = str(task)
        clr_inject.remove_task(self.backbone, key)
        del self.heads[key]

    def select_task(self, task: Optional[TaskRef]) -> None:
        """Route the forward pass through task ``task``'s set (``None``: the plain frozen backbone)."""
        key = None if task is None else str(task)
        if key is not None and key not in self.heads:
            raise KeyError(
                f"task {key} has no CLR state yet (known: {list(self.heads)}); a task gets its kernels, norms and head "
                "in on_task_start, or from load_task_adapter"
            )
        clr_inject.set_task(self.backbone, key)

    def task_parameters(self, task: TaskRef) -> list[nn.Parameter]:
        key = str(task)
        return list(clr_inject.task_parameters(self.backbone, key)) + list(self.heads[key].parameters())

    # -- task hooks ----------------------------------------------------------------------------
    def on_task_start(self, task: Task) -> None:
        super().on_task_start(task)  # the task's head
        self.add_task(task.index, task.num_classes)
        self.requires_grad_(False)
        for p in self.task_parameters(task.index):
            p.requires_grad_(True)
        self.select_task(task.index)

    def on_task_end(self, task: Task) -> None:
        super().on_task_end(task)
        for p in self.task_parameters(task.index):
            p.requires_grad_(False)

    # -- forward -------------------------------------------------------------------------------
    def features(self, x: torch.Tensor, task_id: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Features of every sample through its own task's set; a mixed batch is split by task
        (in training mode each part then has its own batch-norm statistics)."""
        if task_id is None:
            raise ValueError("CLRClassifier needs the task id of every sample (task_id=[B] tensor)")
        ids = task_id.unique().tolist()
        if len(ids) == 1:
            self.select_task(ids[0])
            return self.backbone(x)
        features = None
        for t in ids:
            rows = task_id == t
            self.select_task(t)
            part = self.backbone(x[rows])
            if features is None:
                features = part.new_empty((len(x),) + tuple(part.shape[1:]))
            features[rows] = part
        assert features is not None, "a batch holds at least one sample"
        return features

    # -- bookkeeping ---------------------------------------------------------------------------
    def parameter_budget(self, task: TaskRef) -> dict[str, float]:
        """Exact per-task counts: reprogramming kernels, norm parameters, norm statistics, head,
        and the trainable total as a share of the frozen, shared backbone."""
        return parameter_budget(self.backbone, str(task), self.heads[str(task)] if str(task) in self.heads else None)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Create the per-task state a checkpoint holds before Lightning loads it."""
        for key, value in checkpoint.get("state_dict", {}).items():
            match = re.fullmatch(r"heads\.([^.]+)\.weight", key)
            if match and match.group(1) not in self.heads:
                self.add_task(match.group(1), value.shape[0])

    def _kernel_sizes(self) -> Optional[dict[str, Optional[int]]]:
        """The kernel put after 1x1 and after larger convolutions (``None``: none there)."""
        if self.variant == "affine":
            return None
        return {
            "after_1x1_convolutions": clr_inject.kernel_size_for(self.variant, (1, 1), self.kernel_size),
            "after_larger_convolutions": clr_inject.kernel_size_for(self.variant, (3, 3), self.kernel_size),
        }

    def describe(self) -> dict:
        info = super().describe()
        info.update(
            {
                "method": "CLR (Ge et al., ICCV 2023)",
                "variant": self.variant,
                "variant_origin": clr_inject.VARIANT_ORIGINS[self.variant],
                "kernel_size": self._kernel_sizes(),
                "per_task_norm": self.per_task_norm,
                "norm_penalty": self.norm_penalty,
                "norm_penalty_form": "sum of unsquared L2 norms of trainable tensors",
                "reprogrammed_layers": len(
                    [n for n in self.injected if not isinstance(self.backbone.get_submodule(n), TaskNorm)]
                ),
                "model_selection": "validation split (the released code selects on test)",
            }
        )
        if self.heads:
            info["budget_per_task"] = self.parameter_budget(next(iter(self.heads)))
        return info


def parameter_budget(backbone: nn.Module, key: str, head: Optional[nn.Module] = None) -> dict[str, float]:
    kernels = norm_params = norm_stats = 0
    task_owned: set[int] = set()
    for layer in clr_inject.task_layers(backbone):
        if key not in layer.task_keys():
            continue
        for name, tensor in layer.task_state(key).items():
            task_owned.add(id(tensor))
            if isinstance(layer, (ReprogrammedConv, ChannelAffine)):
                kernels += tensor.numel()
            elif isinstance(tensor, nn.Parameter):
                norm_params += tensor.numel()
            elif name.endswith(("running_mean", "running_var")):
                norm_stats += tensor.numel()
    all_task = {
        id(p) for layer in clr_inject.task_layers(backbone) for k in layer.task_keys() for p in layer.task_state(k).values()
    }
    shared = sum(p.numel() for p in backbone.parameters() if id(p) not in all_task)
    head_params = sum(p.numel() for p in head.parameters()) if head is not None else 0
    trainable = kernels + norm_params + head_params
    return {
        "kernels": kernels,
        "norm_parameters": norm_params,
        "norm_statistics": norm_stats,
        "head": head_params,
        "trainable": trainable,
        "backbone": shared,
        "kernels_ratio": kernels / shared,
        "trainable_ratio": trainable / shared,
    }
