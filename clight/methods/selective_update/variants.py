"""How SPU keeps the entries outside its masks from moving, resolved once per run.

``exact`` (clight's default): gradients outside the mask are zeroed before every optimizer step
(so gradient clipping and the optimizer's moments see only the selected entries), and after
every optimizer step the entries outside the mask are copied back from the weights as they were
when the task started. Decoupled weight decay (AdamW), coupled decay, momentum, gradient
accumulation and mixed precision therefore cannot move them: they stay bit-identical. Cost: one
copy of the candidate weights for the duration of a fit and one ``torch.where`` per candidate
tensor per optimizer step.

``released_code``: gradients masked only, as the released code does. With AdamW the decay
``w <- w - lr * wd * w`` still shrinks every entry, selected or not.
"""

from __future__ import annotations

from typing import Literal

import torch

from clight.models.sharding import local

VariantName = Literal["exact", "released_code"]


class GradientMask:
    """Zero the gradients outside the masks before the optimizer step (the released code)."""

    name = "released_code"
    keeps_copy = False
    description = (
        "gradients masked before each optimizer step; decoupled weight decay (AdamW) still shrinks "
        "masked-out entries (released code)"
    )

    @torch.no_grad()
    def mask_gradients(self, weights: dict[str, torch.nn.Parameter], masks: dict[str, torch.Tensor]) -> None:
        for name, p in weights.items():
            if p.grad is not None:
                grad = local(p.grad)  # with sharded parameters: this rank's shard, masked by its shard of the mask
                torch.where(masks[name], grad, torch.zeros((), dtype=grad.dtype, device=grad.device), out=grad)

    def after_step(
        self, weights: dict[str, torch.nn.Parameter], masks: dict[str, torch.Tensor], anchors: dict[str, torch.Tensor]
    ) -> None:
        """Nothing: masked-out entries move wherever the optimizer moves them."""


class ExactMask(GradientMask):
    """Masked gradients, and masked-out entries restored from the task-start copy after every step."""

    name = "exact"
    keeps_copy = True
    description = (
        "gradients masked before each optimizer step, and masked-out entries restored from the task-start "
        "weights after every optimizer step: bit-identical under any optimizer (clight)"
    )

    @torch.no_grad()
    def after_step(
        self, weights: dict[str, torch.nn.Parameter], masks: dict[str, torch.Tensor], anchors: dict[str, torch.Tensor]
    ) -> None:
        for name, p in weights.items():
            value = local(p)
            torch.where(masks[name], value, anchors[name], out=value)


VARIANTS: dict[str, type[GradientMask]] = {"exact": ExactMask, "released_code": GradientMask}
