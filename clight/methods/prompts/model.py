"""PromptClassifier: the shared model of the prompt methods (L2P, DualPrompt, CODA-Prompt).

A frozen timm ViT, a learnable prompt module and a linear head over all classes. Every forward
runs the ViT twice: once without prompts for the query (its [CLS] feature, no gradient), then with
the prompts the method composes from that query. In training the sample's task id is available
and a method may use it (DualPrompt picks its task's E-prompt); outside training (validation,
evaluation) it never is. A method's own loss (L2P's and DualPrompt's key matching, CODA-Prompt's
optional orthogonality penalty) is added as the loss term ``prompt_loss``.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.nn import functional as F

from clight.choices import check_choice
from clight.data.task import SequenceInfo, Task
from clight.methods.prompts.vit import (
    Prompting,
    check_vision_transformer,
    frozen_query,
    preprocessor,
    prompted_tokens,
    vision_transformer,
)
from clight.models.classifier import ContinualClassifier
from clight.models.module import default_optimizer

Pooling = Literal["token", "prompt"]


class PromptClassifier(ContinualClassifier):
    """Base of the prompt methods; subclasses build ``self.prompts`` and compose a ``Prompting``.

    ``pooling``: the head reads the [CLS] token (``token``) or the mean of the prompt tokens'
    outputs (``prompt``, L2P). ``train_mask``: in training, the logits of classes outside the
    current task are masked (the released code of all three methods); otherwise only classes not
    seen yet are. ``match_weight``: the weight of the key-query matching loss.
    """

    settings = ("class_incremental", "domain_incremental")
    settings_reason = " (prompt methods choose prompts without a task id at test time)"
    method_name = "prompt method"

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        pooling: Pooling = "token",
        train_mask: bool = True,
    ) -> None:
        check_choice(f"{type(self).__name__}.pooling", pooling, Pooling)
        check_vision_transformer(backbone, type(self).__name__)
        super().__init__(backbone, optimizer, lr_scheduler, train_backbone=False)
        self.pooling, self.train_mask = pooling, train_mask
        self.prompts: Optional[nn.Module] = None
        self.register_buffer("task_mask", torch.zeros(0, dtype=torch.bool), persistent=False)
        self._prompt_loss: Optional[torch.Tensor] = None

    @property
    def vit(self) -> nn.Module:
        return vision_transformer(self.backbone)  # checked at construction

    @property
    def embed_dim(self) -> int:
        return int(self.vit.embed_dim)

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    # -- what a method defines ----------------------------------------------------------------------
    def check_prompts(self, info: SequenceInfo) -> None:
        """Raise ``ConfigError`` when the method's settings do not fit this ViT and sequence."""

    def build_prompts(self, info: SequenceInfo) -> nn.Module:
        raise NotImplementedError

    def compose(self, query: torch.Tensor, task_id: Optional[torch.Tensor]) -> tuple[Prompting, Optional[torch.Tensor]]:
        """The prompts of a batch from its queries (and, in training only, task ids), with the
        batch's own loss, weighted (or None)."""
        raise NotImplementedError

    def has_prompt_loss(self) -> bool:
        """Whether ``compose`` returns a loss to add in training."""
        return False

    # -- the sequence -------------------------------------------------------------------------------
    def check_compatible(self, info: SequenceInfo) -> None:
        super().check_compatible(info)
        self.check_prompts(info)

    def setup_sequence(self, info: SequenceInfo) -> None:
        super().setup_sequence(info)
        if self.prompts is None:
            self.prompts = self.build_prompts(info).to(self.seen_mask.device)
        if self.has_prompt_loss():
            self.add_loss_term("prompt_loss", _prompt_loss_term)

    def on_task_start(self, task: Task) -> None:
        super().on_task_start(task)
        mask = torch.zeros(self.sequence.num_classes, dtype=torch.bool)
        mask[torch.tensor(task.classes)] = True
        self.task_mask = mask.to(self.seen_mask.device)

    # -- forward ------------------------------------------------------------------------------------
    def features(self, x: torch.Tensor, task_id: Optional[torch.Tensor] = None) -> torch.Tensor:
        vit = self.vit
        x = preprocessor(self.backbone)(x)
        query = frozen_query(vit, x)
        prompting, self._prompt_loss = self.compose(query, task_id if self.training else None)
        tokens = prompted_tokens(vit, x, prompting)
        if self.pooling == "prompt":
            pooled = tokens[:, : prompting.num_tokens].mean(dim=1)
        else:
            pooled = tokens[:, prompting.num_tokens]  # the class token, after the prompt tokens
        return vit.fc_norm(pooled)

    def task_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        features = self.features(batch["input"], batch["task_id"])
        logits = self.logits(features)
        if self.train_mask and self.training:
            logits = logits.masked_fill(~self.task_mask, float("-inf"))
        return F.cross_entropy(logits, batch["target"]), {"features": features, "logits": logits}

    def describe(self) -> dict:
        info = super().describe()
        info.update(
            {
                "method": self.method_name,
                "pooling": "[CLS] token" if self.pooling == "token" else "mean of the prompt tokens' outputs",
                "train_mask": "current task's classes in training (released code)" if self.train_mask else "seen classes",
                "query": "frozen ViT's [CLS] pre-logits feature, no prompts",
                "prompt_parameters": sum(p.numel() for p in self.prompts.parameters()) if self.prompts is not None else 0,
            }
        )
        return info


def _prompt_loss_term(module: Any, batch: dict, outputs: dict) -> torch.Tensor:
    """The prompt method's own loss of the last forward (already weighted)."""
    if module._prompt_loss is None:
        return outputs["logits"].new_zeros(())
    return module._prompt_loss
