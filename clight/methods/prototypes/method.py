"""The shared callback of the gradient-free methods: a classifier written from class statistics of
a frozen feature extractor, with optional first-session adaptation.

``setup_sequence`` replaces the model's single head with the method's classifier (and, with
``adaptation``, prepares the network the first task adapts); nothing is then trainable outside the
first task, so the runner skips those fits (``gradient_free``). ``on_task_end`` reads the task's
training split once through the frozen model (each rank its share), sums the statistics across
ranks, and rewrites the classifier. Subclasses say what the classifier is and what it keeps.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from clight.contract import ConfigError, RunContext
from clight.data.task import SequenceInfo, Task
from clight.methods.base import ContinualCallback
from clight.methods.prototypes import adaptation as first_session
from clight.methods.prototypes.heads import AdaptingHead, CosineHead
from clight.models.classifier import ContinualClassifier

OWNER = "_classifier_method"  # the attribute that marks which method owns a model's head


class ClassStatisticsMethod(ContinualCallback):
    """Base of SimpleCIL, APER and RanPAC (see ``docs/methods/prototypes.md``)."""

    settings = ("class_incremental", "domain_incremental")
    gradient_free = True
    #: APER concatenates the pretrained and the adapted features; RanPAC adapts the backbone itself
    concatenate_adapted: ClassVar[bool] = False
    salt: ClassVar[int] = 0

    def __init__(self, adaptation: Optional[first_session.Adaptation] = None) -> None:
        if adaptation is not None and adaptation not in first_session.ADAPTATIONS:
            raise ValueError(f"{type(self).__name__}.adaptation must be one of {list(first_session.ADAPTATIONS)} or null")
        self.adaptation = adaptation
        self.history: list[dict] = []
        self._datamodule: Any = None
        self._context = RunContext()
        self._adapting = False
        self._trained_first: list[nn.Parameter] = []  # what the first task's adaptation trains

    # -- where it applies ---------------------------------------------------------------------------
    def check_compatible(self, module: Any, datamodule: Any, info: SequenceInfo) -> None:
        super().check_compatible(module, datamodule, info)
        name = type(self).__name__
        if not isinstance(module, ContinualClassifier) or type(module).features is not ContinualClassifier.features:
            raise ConfigError(
                f"{name} builds its classifier from a frozen feature extractor: the model must be a ContinualClassifier "
                f"whose features are its backbone's output, not {type(module).__name__}"
            )
        if module.train_backbone:
            raise ConfigError(
                f"{name} needs a frozen feature extractor: set model.init_args.train_backbone: false"
                + (" (the first task's adaptation trains a copy of it)" if self.adaptation else "")
            )
        owner = getattr(module, OWNER, None)  # (id, class name) of the method that owns the head
        if owner is not None and owner[0] != id(self):
            raise ConfigError(f"{name} and {owner[1]} would both replace the model's classifier: keep one of them in `methods`")
        first_session.check_adaptation(module.backbone, self.adaptation, name)
        object.__setattr__(module, OWNER, (id(self), name))

    # -- the sequence -------------------------------------------------------------------------------
    def setup_sequence(self, module: Any, datamodule: Any, context: RunContext) -> None:
        self._datamodule, self._context = datamodule, context
        generator = context.generator(self.salt)
        num_classes = module.sequence.num_classes
        adaptation_head = None
        if self.adaptation is not None:
            adaptation_width = int(module.backbone.num_features)
            if self.concatenate_adapted:
                adapted = copy.deepcopy(module.backbone)
                self._trained_first = first_session.prepare(adapted, self.adaptation, generator)
                module.backbone = first_session.FirstSessionBackbone(module.backbone, adapted)
            else:
                self._trained_first = first_session.prepare(module.backbone, self.adaptation, generator)
            adaptation_head = CosineHead(adaptation_width, num_classes, generator)
        classifier = self.make_classifier(int(module.backbone.num_features), num_classes, generator)
        head = classifier if adaptation_head is None else AdaptingHead(classifier, adaptation_head)
        module.heads["all"] = head.to(module.seen_mask.device)
        module.backbone.to(module.seen_mask.device)
        self._freeze(module)

    def on_task_start(self, module: Any, task: Task) -> None:
        if self.adaptation is not None and task.index == 0:
            self._set_adapting(module, True)

    def on_task_end(self, module: Any, task: Task) -> None:
        if self._adapting:
            self._set_adapting(module, False)
        self.learn_task(module, task)

    # -- first-session adaptation -------------------------------------------------------------------
    def _freeze(self, module: Any) -> None:
        module.backbone.requires_grad_(False)
        module.heads["all"].requires_grad_(False)

    def _set_adapting(self, module: Any, adapting: bool) -> None:
        """Make the adaptation trainable (or freeze everything for good) and route the model through it."""
        self._adapting = adapting
        self._freeze(module)
        if isinstance(module.backbone, first_session.FirstSessionBackbone):
            module.backbone.adapting = adapting
        module.heads["all"].adapting = adapting
        if adapting:
            for parameter in self._trained_first:
                parameter.requires_grad_(True)
            module.heads["all"].adaptation.requires_grad_(True)

    # -- what subclasses define ---------------------------------------------------------------------
    def make_classifier(self, num_features: int, num_classes: int, generator: torch.Generator) -> nn.Module:
        raise NotImplementedError

    def learn_task(self, module: Any, task: Task) -> None:
        raise NotImplementedError

    def classifier(self, module: Any) -> nn.Module:
        head = module.heads["all"]
        return head.classifier if isinstance(head, AdaptingHead) else head

    def describe(self) -> dict:
        return {
            "class": type(self).__name__,
            "adaptation": first_session.ORIGINS.get(self.adaptation, "none: the pretrained backbone as it is"),
            "statistics": "one pass over each task's training split after the task, summed across ranks",
            "history": self.history,
        }
