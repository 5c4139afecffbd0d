"""Which models the LoRA family runs on, and the refusals (``ConfigError``) for the rest.

Every method of the family acts on a Hugging Face causal LM held by a ``ContinualCausalLM``:
the LoRA methods on the peft model its ``lora`` config builds (they need LoRA targets), OSF on
the full-weight network (it wraps the weights itself, so the model must have no LoRA). clight's
classifiers (timm ViTs) and ``ContinualCLIP`` train no LoRA adapters, so they are refused with
the combinations that are supported. At most one method of the family acts on a model: two
would fight over which adapters are active and trainable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from clight.contract import ConfigError

if TYPE_CHECKING:
    from peft import PeftModel

SUPPORTED = (
    "SeqLoRA, IncLoRA, OLoRA and InfLoRA run on a ContinualCausalLM with model.lora set (its r, alpha, dropout and "
    "target_modules configure every task's adapter); OSF runs on a ContinualCausalLM without LoRA (model.lora: null). "
    "Classifiers (timm ViTs) and ContinualCLIP have no LoRA adapters in clight, so none of these methods runs on them"
)
_OWNER = "_clight_lora_family_owner"


def _causal_lm(module: Any, owner: str) -> Any:
    from clight.models.causal_lm import ContinualCausalLM

    if not isinstance(module, ContinualCausalLM):
        raise ConfigError(f"{owner} does not support the model {type(module).__name__}. {SUPPORTED}.")
    return module


def lora_network(module: Any, owner: str) -> PeftModel:
    """The peft model holding ``module``'s LoRA adapters (a ``ConfigError`` when it has none)."""
    lm = _causal_lm(module, owner)
    if not lm.lora_config:
        raise ConfigError(
            f"{owner} trains LoRA adapters, and the model {lm.model_name} has no LoRA targets (model.lora is null): "
            "set model.lora, e.g. {r: 8, alpha: 16, dropout: 0.05, target_modules: [q_proj, v_proj]}"
        )
    return lm.net


def full_network(module: Any, owner: str) -> torch.nn.Module:
    """The full-weight network of ``module`` (a ``ConfigError`` when it trains LoRA instead)."""
    lm = _causal_lm(module, owner)
    if lm.lora_config:
        raise ConfigError(
            f"{owner} fine-tunes the full weights inside an orthogonal subspace and wraps them itself; the model "
            f"{lm.model_name} has LoRA adapters: set model.lora to null"
        )
    return lm.net


def claim(module: Any, method: object, owner: str) -> None:
    """Record ``method`` as the one LoRA-family method of ``module`` (a ``ConfigError`` if another is)."""
    claimed = module.__dict__.get(_OWNER)
    if claimed is not None and claimed != id(method):
        raise ConfigError(
            f"{owner}: another method of the LoRA family (SeqLoRA, IncLoRA, OLoRA, InfLoRA, OSF) already acts on this "
            "model; keep one of them in `methods`, on a freshly built model (a model keeps what its method made of it)"
        )
    module.__dict__[_OWNER] = id(method)  # an int: copies of the model (frozen_copy) stay independent of the method
