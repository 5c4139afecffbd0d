"""The loss GeRe puts on replayed general rows, and the alternatives the paper compares it with,
each a small object resolved once from its name.

Every variant gets the general rows of a batch already gathered (``GeneralRows``: the real
tokens' hidden states and logits, which sample and how many tokens each) and returns the
unweighted loss. Where a variant needs the base model's outputs it says where they come from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional

import torch

from clight.methods.general_replay.losses import FEATURE_LOSSES, logit_kl, tm_loss
from clight.methods.general_replay.packed_states import token_rows
from clight.methods.general_replay.reference import BaseReference

ReplayLossName = Literal["tm", "label_fitting", "logit_kl", "feature_l1", "feature_l2"]
BaseOutputs = Literal["auto", "frozen_copy", "cache"]


@dataclass
class GeneralRows:
    """The general rows of one batch: their positions, their real tokens, and the model's outputs there."""

    rows: torch.Tensor  # [B] bool: which batch rows are general samples
    mask: torch.Tensor  # [G, L] bool: real tokens of the general rows
    index: torch.Tensor  # [G] row of each in the general set
    lengths: torch.Tensor  # [G] real tokens of each
    hidden: torch.Tensor  # [tokens, d] last hidden states of the real tokens

    @classmethod
    def of(cls, batch: dict, hidden: torch.Tensor) -> Optional["GeneralRows"]:
        rows = batch["is_general"].to(hidden.device)
        if not bool(rows.any()):
            return None
        mask = batch["attention_mask"][rows].bool()
        return cls(rows, mask, batch["general_index"][rows], mask.sum(1), hidden[rows][mask])


class ReplayLoss:
    """A loss on the general rows. ``needs_reference``: it reads thresholds / states / cached
    features of the base model (``BaseReference``)."""

    name: str = "replay"  # FeatureImitation names each instance ("feature_l1" or "feature_l2")
    adds_term: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = False

    def prepare(self, module: Any) -> Optional[str]:
        """Get ready for ``module``; return where base outputs come from (``None``: not needed)."""
        return None

    def __call__(
        self, module: Any, batch: dict, outputs: dict, general: GeneralRows, reference: Optional[BaseReference]
    ) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict:
        return {}


class ThresholdMargin(ReplayLoss):
    """GeRe's loss: keep every (token, dimension) entry in the state the base model had."""

    name = "tm"
    needs_reference = True

    def prepare(self, module):
        return "cache"

    def __call__(self, module, batch, outputs, general, reference):
        t = reference.thresholds
        return tm_loss(general.hidden, reference.states.gather(general.index, general.lengths), t.neg, t.pos)

    def describe(self):
        return {
            "thresholds": "mu_d +/- sd_d over all unpadded general tokens of the base model's last hidden states (after final norm)",
            "states": "2-bit packed NEG/POS/NEU (clight); the released code stores float32 states",
            "tm_average": "over violating entries only",
        }


class LabelFitting(ReplayLoss):
    """The general rows' cross-entropy alone, which the model's task loss already holds."""

    name = "label_fitting"
    adds_term = False


class BaseModelOutputs(ReplayLoss):
    """Variants that compare with the base model's outputs on the general rows: from the model
    with its adapters disabled (LoRA: no copy) or from a frozen copy taken before the first task."""

    def __init__(self, base_outputs: str = "auto") -> None:
        self.base_outputs = base_outputs
        self.base_model: Optional[torch.nn.Module] = None

    def prepare(self, module):
        if self.base_outputs == "frozen_copy" or not module.has_adapters:
            self.base_model = module.frozen_network()
            return "frozen_copy"
        return "adapters_disabled"

    @torch.no_grad()
    def base(self, module: Any, batch: dict, general: GeneralRows) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = batch["input_ids"][general.rows], batch["attention_mask"][general.rows]
        if self.base_model is None:
            return module.base_forward(ids, mask)
        if next(self.base_model.parameters()).device != ids.device:
            self.base_model.to(ids.device)
        out = self.base_model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        return out.logits, out.hidden_states[-1]


class LogitImitation(BaseModelOutputs):
    """KL(base || current) of the next-token distributions on the general tokens."""

    name = "logit_kl"

    def __init__(self, base_outputs: str = "auto", temperature: float = 1.0) -> None:
        super().__init__(base_outputs)
        self.temperature = temperature

    def __call__(self, module, batch, outputs, general, reference):
        base_logits, _ = self.base(module, batch, general)
        return logit_kl(outputs["logits"][general.rows][general.mask], base_logits[general.mask], self.temperature)

    def describe(self):
        return {"kl_temperature": self.temperature}


class FeatureImitation(BaseModelOutputs):
    """L1 or L2 distance of the last hidden states to the base model's (from a float16 cache
    with ``base_outputs="cache"``)."""

    def __init__(self, name: str, base_outputs: str = "auto") -> None:
        super().__init__(base_outputs)
        self.name = name
        self.distance = FEATURE_LOSSES[name]

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        return self.base_outputs == "cache"

    def prepare(self, module):
        return "cache" if self.needs_reference else super().prepare(module)

    def __call__(self, module, batch, outputs, general, reference):
        if self.needs_reference:
            base_h = reference.features[token_rows(reference.states.offsets, general.index, general.lengths)]
        else:
            base_h = self.base(module, batch, general)[1][general.mask]
        return self.distance(general.hidden, base_h)


def make_replay_loss(name: str, base_outputs: str, kl_temperature: float) -> ReplayLoss:
    if name == "tm":
        return ThresholdMargin()
    if name == "label_fitting":
        return LabelFitting()
    if name == "logit_kl":
        return LogitImitation(base_outputs, kl_temperature)
    return FeatureImitation(name, base_outputs)
