"""First-session adaptation (APER; RanPAC's Phase 1): the backbone, or a copy of it, is adapted on
the first task with a trained cosine head, then frozen for good.

Variants (``adaptation``), all on any timm backbone unless noted:

- ``"finetune"``: every weight of the adapted network trains (APER w/ Finetune);
- ``"ssf"``: a per-channel scale and shift after every convolution, linear layer and norm
  (APER w/ SSF; RanPAC's SSF);
- ``"adapter"``: an AdaptFormer adapter beside every transformer block's MLP (APER w/ Adapter;
  RanPAC's default PETL method): vision transformers only.

APER's VPT variants are not included.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import nn

from clight.contract import ConfigError
from clight.methods.prototypes.petl import adapter_blocks, insert_adapters, insert_ssf
from clight.models.backbones import TimmBackbone

Adaptation = Literal["finetune", "ssf", "adapter"]
ADAPTATIONS = ("finetune", "ssf", "adapter")
ORIGINS = {
    "finetune": "APER w/ Finetune: every weight of the adapted network trains on the first task",
    "ssf": "APER w/ SSF: scale and shift after every convolution, linear layer and norm",
    "adapter": "APER w/ Adapter (AdaptFormer, bottleneck 64, scale 0.1, beside each block's MLP)",
}


def check_adaptation(backbone: nn.Module, adaptation: Optional[str], owner: str) -> None:
    if adaptation is None:
        return
    if adaptation not in ADAPTATIONS:
        raise ConfigError(f"{owner}.adaptation must be one of {list(ADAPTATIONS)} or null, got {adaptation!r}")
    if adaptation == "adapter" and not adapter_blocks(backbone):
        raise ConfigError(
            f"{owner}.adaptation 'adapter' puts adapters beside transformer blocks, and {type(backbone).__name__} has none "
            "(a CNN): use adaptation 'ssf' or 'finetune'"
        )


def prepare(network: nn.Module, adaptation: str, generator: torch.Generator) -> list[nn.Parameter]:
    """Insert ``adaptation``'s modules into ``network`` (frozen) and return what trains in the first task."""
    network.requires_grad_(False)
    if adaptation == "finetune":
        return list(network.parameters())
    if adaptation == "ssf":
        return insert_ssf(network, generator)
    return insert_adapters(network, generator)


class FirstSessionBackbone(nn.Module):
    """The frozen pretrained backbone and its copy adapted on the first task (APER's model merging):
    features are the adapted copy's while it adapts, then ``[pretrained(x), adapted(x)]``."""

    def __init__(self, pretrained: nn.Module, adapted: nn.Module) -> None:
        super().__init__()
        self.pretrained, self.adapted = pretrained, adapted
        self.num_features = 2 * int(pretrained.num_features)
        self.adapting = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.pretrained, TimmBackbone) and isinstance(self.adapted, TimmBackbone):
            x = self.pretrained.preprocess(x)  # resize and normalise once for both branches
            adapted, pretrained = self.adapted.model, self.pretrained.model
        else:
            adapted, pretrained = self.adapted, self.pretrained
        if self.adapting:
            return adapted(x)
        return torch.cat([pretrained(x), adapted(x)], dim=-1)
