"""Loading CLIP for ContinualCLIP: a transformers ``CLIPModel`` by name or path, or ``tiny``, a
small random one with an offline character-level tokenizer (for tests)."""

from __future__ import annotations

import string
from typing import Optional

import torch

TINY_CLIP = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
    projection_dim=16,
    max_position_embeddings=64,
)


def prompt_tokenizer():
    """A character-level tokenizer over printable ASCII that wraps every text in ``<bos> ... <eos>``.

    ``<eos>`` has the highest id, so CLIP's text pooling finds it whichever rule the installed
    transformers applies (the position of the ``eos_token_id``, or the legacy argmax of the ids).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1}
    for c in string.printable:
        if c not in "\x0b\x0c\r":
            vocab.setdefault(c, len(vocab))
    vocab["<bos>"], vocab["<eos>"] = len(vocab), len(vocab) + 1
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )


def tiny_clip(tokenizer, seed: int = 0, **overrides):
    """A randomly initialised small ``CLIPModel`` (seeded) over ``tokenizer``'s vocabulary."""
    from transformers import CLIPConfig, CLIPModel

    sizes = {**TINY_CLIP, **overrides}
    unknown = set(sizes) - set(TINY_CLIP)
    if unknown:
        raise ValueError(f"unknown tiny_config keys {sorted(unknown)}: use {sorted(TINY_CLIP)}")
    tower = {k: sizes[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")}
    text = dict(
        tower,
        vocab_size=len(tokenizer),
        max_position_embeddings=sizes["max_position_embeddings"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision = dict(tower, image_size=sizes["image_size"], patch_size=sizes["patch_size"])
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=sizes["projection_dim"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPModel(config)


def load_clip(model: str, dtype: str = "float32", seed: int = 0, tiny_config: Optional[dict] = None):
    """``(CLIPModel, tokenizer)`` for ``tiny`` or a transformers name or path."""
    if model == "tiny":
        tokenizer = prompt_tokenizer()
        return tiny_clip(tokenizer, seed, **(tiny_config or {})).to(getattr(torch, dtype)), tokenizer
    from transformers import AutoTokenizer, CLIPModel

    from clight.assets.hub import from_pretrained

    net = from_pretrained(CLIPModel.from_pretrained, model, "CLIP model", model=True, dtype=getattr(torch, dtype))
    tokenizer = from_pretrained(AutoTokenizer.from_pretrained, model, "CLIP tokenizer")
    return net, tokenizer
