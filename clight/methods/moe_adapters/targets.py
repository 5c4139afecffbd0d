"""Where MoE adapters attach, for each family of models clight runs them on.

A target names the network whose forward is routed (the module the model calls), how to read the
frozen features DDAS works on from one forward with every adapter off, how a training batch is
fed to that network, and how the router reads a block (the class token, or each token of a causal
LM). The blocks are found by structure: a module with an ``mlp`` child and a norm before it
(``post_attention_layernorm``: Llama-style LMs; ``norm2``: timm ViTs; ``layer_norm2``: Hugging Face
CLIP; ``ln_2``: GPT-2).
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Optional, Sequence, cast

import torch
from torch import nn

from clight.contract import ConfigError
from clight.methods.moe_adapters.layer import MoEBlock, RouterInput

TAPS = ("post_attention_layernorm", "norm2", "layer_norm2", "ln_2")


def transformer_blocks(network: nn.Module) -> list[tuple[str, str]]:
    """``(qualified name, tap)`` of every transformer block of ``network`` not wrapped yet."""
    found: list[tuple[str, str]] = []
    inside: list[str] = []
    for name, module in network.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if isinstance(module, MoEBlock):
            inside.append(name)
            continue
        children = dict(module.named_children())
        tap = next((t for t in TAPS if t in children), None)
        if "mlp" in children and tap is not None:
            found.append((name, tap))
            inside.append(name)
    return found


def select_blocks(blocks: list[tuple[str, str]], patterns: Optional[Sequence[str]], owner: str) -> list[tuple[str, str]]:
    """The blocks whose name matches any regex of ``patterns`` (all of them for ``None``)."""
    if patterns is None:
        return blocks
    chosen = [(n, t) for n, t in blocks if any(re.search(p, n) for p in patterns)]
    if not chosen:
        raise ConfigError(
            f"{owner}: no transformer block matches blocks={list(patterns)}; the blocks are {[n for n, _ in blocks]}"
        )
    return chosen


class Target:
    """How MoE adapters attach to one family of models (stateless: it never holds the model)."""

    name = "model"
    router_input: RouterInput = "first"

    def network(self, module: Any) -> nn.Module:
        raise NotImplementedError

    def pretrained(self, module: Any) -> nn.Module:
        """The pretrained part of the model, frozen for good (heads of a classifier stay the model's)."""
        return self.network(module)

    def feature_dim(self, module: Any) -> int:
        raise NotImplementedError

    def batch_size(self, args: tuple, kwargs: dict) -> int:
        return int(args[0].shape[0])

    def token_mask(self, args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
        return None

    def frozen_features(self, network: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        """``[B, d]`` features of the inputs of one call of ``network`` (every adapter is off)."""
        return network(*args, **kwargs).float()

    def batch_call(self, module: Any, batch: dict) -> tuple[tuple, dict, AbstractContextManager]:
        """How the model calls the network on a training batch: args, kwargs, routing context."""
        raise NotImplementedError

    def follower(self, module: Any) -> Optional[nn.Module]:
        """A second network whose routes follow the first's per sample (CLIP's text tower), or None."""
        return None

    def describe(self) -> str:
        return self.name


class CausalLMTarget(Target):
    """A ``ContinualCausalLM`` (full weights, no LoRA): every decoder layer; each token is routed on
    its own; DDAS reads the mean of the frozen final-norm hidden states over each row's prompt
    (all its tokens for general text)."""

    name = "causal LM"
    router_input: RouterInput = "token"

    def network(self, module: Any) -> nn.Module:
        return module.net

    def feature_dim(self, module: Any) -> int:
        return int(module.hidden_size)

    @staticmethod
    def _ids_mask(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        return ids, (mask if mask is not None else torch.ones_like(ids))

    def batch_size(self, args: tuple, kwargs: dict) -> int:
        return int(self._ids_mask(args, kwargs)[0].shape[0])

    def token_mask(self, args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
        return self._ids_mask(args, kwargs)[1]

    def frozen_features(self, network: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        from clight.models.causal_lm import routing_tokens
        from clight.models.sharding import is_sharded

        ids, mask = self._ids_mask(args, kwargs)
        if is_sharded(network):  # a sharded network gathers its parameters only when called through its own forward
            out = network(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True)
            hidden = out.hidden_states[-1].float()  # the final norm's output, as last_hidden_state
        else:
            hidden = cast(nn.Module, network.base_model)(
                input_ids=ids, attention_mask=mask, use_cache=False
            ).last_hidden_state.float()
        tokens = routing_tokens()
        if tokens is None or tokens.shape != ids.shape:
            tokens = mask
        weight = tokens.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weight).sum(1) / weight.sum(1).clamp_min(1)

    def batch_call(self, module: Any, batch: dict) -> tuple[tuple, dict, AbstractContextManager]:
        from clight.models.causal_lm import prompt_tokens, route_by

        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        return (), kwargs, route_by(prompt_tokens(batch["labels"], batch["attention_mask"]))


class ViTTarget(Target):
    """A ``ContinualClassifier`` whose backbone holds transformer blocks (a timm ViT through
    ``TimmBackbone``, or a timm ViT itself): routed on the class token (on the mean over tokens
    for ViTs without one); DDAS reads the frozen backbone's output features."""

    name = "vision transformer classifier"

    def __init__(self, has_class_token: bool = True) -> None:
        self.router_input = "first" if has_class_token else "mean"

    def network(self, module: Any) -> nn.Module:
        return module.backbone

    def feature_dim(self, module: Any) -> int:
        return int(module.backbone.num_features)

    def batch_call(self, module: Any, batch: dict) -> tuple[tuple, dict, AbstractContextManager]:
        return (batch["input"],), {}, nullcontext()


class CLIPTarget(Target):
    """A ``ContinualCLIP``: the blocks of both towers, as in the released code. DDAS routes each
    image (vision tower, routers on the class token) by the frozen vision tower's pooled output;
    the text tower follows: the class prompts an image is scored against are encoded under that
    image's routes (no adapters at all for an image routed to none: zero-shot CLIP, exactly)."""

    name = "CLIP"

    def network(self, module: Any) -> nn.Module:
        return module.clip.vision_model

    def follower(self, module: Any) -> Optional[nn.Module]:
        return module.clip.text_model

    def pretrained(self, module: Any) -> nn.Module:
        return module.clip  # both towers, their projections and the logit scale

    def feature_dim(self, module: Any) -> int:
        return int(module.clip.config.vision_config.hidden_size)

    def batch_size(self, args: tuple, kwargs: dict) -> int:
        return int((kwargs["pixel_values"] if "pixel_values" in kwargs else args[0]).shape[0])

    def frozen_features(self, network: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        return network(*args, **kwargs).pooler_output.float()

    def batch_call(self, module: Any, batch: dict) -> tuple[tuple, dict, AbstractContextManager]:
        return (), {"pixel_values": module.preprocess(batch["input"])}, nullcontext()


def _has_class_token(network: nn.Module) -> bool:
    return any(getattr(m, "cls_token", None) is not None for m in network.modules())


def resolve_target(module: Any, owner: str = "MoEAdapters") -> Target:
    """The target for ``module``, or a ``ConfigError`` naming the model and what is supported."""
    from clight.models.causal_lm import ContinualCausalLM
    from clight.models.classifier import ContinualClassifier
    from clight.models.clip import ContinualCLIP

    supported = (
        "a ContinualCausalLM (Hugging Face causal LM, no LoRA), a ContinualCLIP, or a ContinualClassifier with a "
        "timm ViT backbone"
    )
    if isinstance(module, ContinualCLIP):
        target: Target = CLIPTarget()
    elif isinstance(module, ContinualCausalLM):
        if module.lora_config:
            raise ConfigError(
                f"{owner} adds its own adapters to the frozen model; {module.model_name} has LoRA: set model.lora to null"
            )
        target = CausalLMTarget()
    elif isinstance(module, ContinualClassifier):
        if not transformer_blocks(module.backbone):
            raise ConfigError(
                f"{owner} needs transformer blocks, and the backbone {type(module.backbone).__name__} of "
                f"{type(module).__name__} has none; supported: {supported}"
            )
        target = ViTTarget(_has_class_token(module.backbone))
    else:
        raise ConfigError(f"{owner} does not support the model {type(module).__name__}; supported: {supported}")
    if not transformer_blocks(target.network(module)):
        raise ConfigError(f"{owner}: {type(module).__name__} ({target.name}) has no transformer blocks it recognises")
    return target
