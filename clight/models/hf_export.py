"""A causal LM's final state as plain ``transformers`` and PEFT folders (``clight.export``)."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

LORA_MARKERS = (".lora_", "lora_embedding_", "lora_magnitude_vector")


def _strip_peft(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A PEFT model's state as its base model's: adapters dropped, wrapped layers' names restored."""
    out = {}
    for key, value in state.items():
        if any(m in key for m in LORA_MARKERS):
            continue
        key = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
        out[key] = value
    return out


def _merged(net: Any, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The base model's state with the adapters peft applies (its active ones) merged into the weights."""
    copy_ = copy.deepcopy(net)
    copy_.load_state_dict(state)
    return copy_.merge_and_unload().state_dict()


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers' "Writing model shards" bar: a redraw per shard of a folder written in a second."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def export_causal_lm(
    net: Any, state: dict[str, torch.Tensor], folder: Path, has_adapters: bool, merge: bool = False
) -> dict[str, str]:
    """Write ``hf/`` (and ``adapter/`` with LoRA) from ``state``, the whole network's state dict
    (keys as ``net.state_dict()``). ``hf/`` holds the base weights, or with ``merge`` the applied
    adapters merged into them (a network that is not sharded only). Returns ``{name: what}``; a
    network with parts plain ``transformers`` does not know (MoE adapters' experts) gets no
    ``hf/``, with the reason."""
    from transformers import AutoModelForCausalLM

    written: dict[str, str] = {}
    merge = merge and has_adapters
    base_state = _merged(net, state) if merge else _strip_peft(state) if has_adapters else dict(state)
    config = (net.get_base_model() if has_adapters else net).config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    expected = set(plain.state_dict())
    unknown = sorted(set(base_state) - expected)
    missing = sorted(expected - set(base_state))
    if unknown or missing:
        written["hf"] = (
            f"not written: the network holds parts plain transformers does not know ({(unknown or missing)[:3]}); "
            "use model.pt with clight"
        )
    else:
        plain.load_state_dict(base_state, assign=True)
        with _no_progress_bars():
            plain.save_pretrained(folder / "hf")
        weights = (
            "LoRA merged into the weights" if merge else "base weights, without the LoRA adapters" if has_adapters else "weights"
        )
        written["hf"] = (
            f"the network as a plain transformers {type(plain).__name__}, {weights} (AutoModelForCausalLM.from_pretrained)"
        )
    if has_adapters and not merge:  # merged, the adapters are in hf/ already
        with _no_progress_bars():
            net.save_pretrained(folder / "adapter", state_dict=state)
        written["adapter"] = "the LoRA adapters as a PEFT folder (PeftModel.from_pretrained(hf model, this folder))"
    return written
