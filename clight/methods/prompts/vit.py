"""A timm Vision Transformer run with prompts: the frozen query, prompt tuning (tokens prepended to
the input sequence) and prefix tuning (keys and values prepended inside chosen blocks' attention).

The forward pass is timm's own (``patch_embed``, ``_pos_embed``, the blocks, ``norm``); only a
block with a prefix runs its attention here, with timm's weights, so any timm ViT whose blocks are
``norm1 -> attn (fused qkv) -> norm2 -> mlp`` works.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F

from clight.contract import ConfigError
from clight.models.backbones import TimmBackbone

BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")


@dataclass
class Prompting:
    """What one batch is prompted with: ``tokens`` ``[B, n, D]`` prepended to the input sequence
    after the position embedding (prompt tuning), and ``prefixes`` per block index, keys and values
    ``[B, m, D]`` each, prepended to that block's attention keys and values (prefix tuning)."""

    tokens: Optional[torch.Tensor] = None
    prefixes: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return 0 if self.tokens is None else self.tokens.shape[1]


def vision_transformer(backbone: nn.Module) -> Optional[nn.Module]:
    """The timm VisionTransformer inside ``backbone`` (a ``TimmBackbone`` or the model itself), or None."""
    from timm.models.vision_transformer import VisionTransformer

    network = backbone.model if isinstance(backbone, TimmBackbone) else backbone
    return network if isinstance(network, VisionTransformer) else None


def check_vision_transformer(backbone: nn.Module, owner: str) -> nn.Module:
    """The backbone's ViT, or a ``ConfigError`` saying what the prompt methods need."""
    vit = vision_transformer(backbone)
    if vit is None:
        raise ConfigError(
            f"{owner} prompts a Vision Transformer: the backbone must be a timm VisionTransformer (e.g. TimmBackbone "
            f"name: vit_base_patch16_224), not {type(getattr(backbone, 'model', backbone)).__name__}"
        )
    for index, block in enumerate(vit.blocks):
        missing = [part for part in BLOCK_PARTS if not hasattr(block, part)] + (
            [] if hasattr(getattr(block, "attn", None), "qkv") else ["attn.qkv"]
        )
        if missing:
            raise ConfigError(f"{owner}: block {index} of {type(vit).__name__} is not a timm ViT block (it lacks {missing})")
    if vit.cls_token is None:
        raise ConfigError(f"{owner}: the query is the frozen ViT's [CLS] feature, and this ViT has no class token")
    return vit


def preprocessor(backbone: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return backbone.preprocess if isinstance(backbone, TimmBackbone) else (lambda x: x)


@torch.no_grad()
def frozen_query(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The pretrained ViT's pre-logits feature of ``x`` without any prompt (its [CLS] token after the
    final norm): the query every prompt method matches against its keys."""
    return vit.forward_head(vit.forward_features(x), pre_logits=True)


def attention_with_prefix(attn: nn.Module, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """timm ``Attention`` on ``x`` ``[B, N, C]`` with ``keys`` / ``values`` ``[B, m, C]`` prepended to its
    projected keys and values (split into heads like them)."""
    batch, length, _ = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    qkv = attn.qkv(x).reshape(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    k = torch.cat([keys.reshape(batch, -1, heads, head_dim).transpose(1, 2), k], dim=2)
    v = torch.cat([values.reshape(batch, -1, heads, head_dim).transpose(1, 2), v], dim=2)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    out = attn.norm(out.transpose(1, 2).reshape(batch, length, heads * head_dim))
    if getattr(attn, "gate", None) is not None:
        out = out * attn.gate(x).sigmoid()
    return attn.proj_drop(attn.proj(out))


def block_with_prefix(block: nn.Module, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    x = x + block.drop_path1(block.ls1(attention_with_prefix(block.attn, block.norm1(x), keys, values)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def prompted_tokens(vit: nn.Module, x: torch.Tensor, prompting: Prompting) -> torch.Tensor:
    """The final-norm output ``[B, n + N, D]`` of the prompted ViT: ``n`` prompt tokens, then the
    class token and the patch tokens."""
    tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
    if prompting.tokens is not None:
        tokens = torch.cat([prompting.tokens.to(tokens.dtype), tokens], dim=1)
    for index, block in enumerate(vit.blocks):
        if index in prompting.prefixes:
            keys, values = prompting.prefixes[index]
            tokens = block_with_prefix(block, tokens, keys.to(tokens.dtype), values.to(tokens.dtype))
        else:
            tokens = block(tokens)
    return vit.norm(tokens)
