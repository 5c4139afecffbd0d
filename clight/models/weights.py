"""Load local checkpoints into a model strictly, renaming keys where the checkpoint differs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from clight.io import UnreadableFileError, load_checkpoint

KeyMap = Union[str, dict[str, str], None]

# Named key maps: ordered {regex: replacement} applied to every checkpoint key.
KEY_MAPS: dict[str, dict[str, str]] = {}


def read_state_dict(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or torch checkpoint file; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own SafetensorError for a damaged header
            raise UnreadableFileError(path, f"not a readable safetensors file ({exc})") from exc
    state = load_checkpoint(path)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def remap_keys(state: dict[str, torch.Tensor], key_map: KeyMap) -> dict[str, torch.Tensor]:
    if key_map is None:
        return dict(state)
    if isinstance(key_map, str):
        if key_map not in KEY_MAPS:
            raise ValueError(f"unknown key map {key_map!r}; known: {sorted(KEY_MAPS)}")
        key_map = KEY_MAPS[key_map]
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in key_map.items():
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


def load_local_weights(
    model: nn.Module, path: Union[str, Path], key_map: KeyMap = None, drop_prefixes: Optional[list[str]] = None
) -> None:
    """Load ``path`` into ``model`` strictly (after ``key_map``); classifier keys the model lacks
    (``num_classes=0``) may be dropped by naming their prefixes in ``drop_prefixes``."""
    state = remap_keys(read_state_dict(path), key_map)
    own = model.state_dict()
    for prefix in drop_prefixes or []:
        state = {k: v for k, v in state.items() if not (k.startswith(prefix) and k not in own)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"weights in {path} do not match {type(model).__name__}: {len(missing)} missing "
            f"(e.g. {missing[:5]}), {len(unexpected)} unexpected (e.g. {unexpected[:5]}). Pass a key_map that renames them."
        )
    shape_errors = [k for k in own if own[k].shape != state[k].shape]
    if shape_errors:
        raise ValueError(f"weights in {path} have wrong shapes for {shape_errors[:5]}")
    model.load_state_dict(state, strict=True)
