"""A causal LM's final state as plain ``transformers`` and PEFT folders (``clight.export``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def export_causal_lm(net: Any, state: dict[str, torch.Tensor], folder: Path, has_adapters: bool) -> dict[str, str]:
    """Write ``hf/`` (and ``adapter/`` with LoRA) from ``state``, the whole network's state dict
    (keys as ``net.state_dict()``). Returns ``{name: what}``; a network with parts plain
    ``transformers`` does not know (MoE adapters' experts) gets no ``hf/``, with the reason."""
    from transformers import AutoModelForCausalLM

    written: dict[str, str] = {}
    base_state = _strip_peft(state) if has_adapters else dict(state)
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
        plain.save_pretrained(folder / "hf")
        written["hf"] = f"the network as a plain transformers {type(plain).__name__} (AutoModelForCausalLM.from_pretrained)"
    if has_adapters:
        net.save_pretrained(folder / "adapter", state_dict=state)
        written["adapter"] = "the LoRA adapters as a PEFT folder (PeftModel.from_pretrained(hf model, this folder))"
    return written
