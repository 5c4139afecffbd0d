"""Tokenizers by name: ``char`` (a tiny offline one for tests), ``smollm2`` (the converted offline
copy) or any Hugging Face name or path."""

from __future__ import annotations

import string


def char_tokenizer():
    """A character-level tokenizer over printable ASCII (100 ids): offline, tiny, for tests."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2}
    for c in string.printable:
        if c not in "\x0b\x0c\r":
            vocab.setdefault(c, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")  # every character, newlines too
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")


def load_tokenizer(name_or_path: str):
    """``char`` (the tiny test tokenizer), ``smollm2`` (converted offline copy) or any HF name/path."""
    if name_or_path == "char":
        return char_tokenizer()
    from transformers import AutoTokenizer

    from clight.assets.hub import from_pretrained
    from clight.assets.smollm2 import resolve_pretrained

    tok = from_pretrained(AutoTokenizer.from_pretrained, resolve_pretrained(name_or_path), "tokenizer")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]
