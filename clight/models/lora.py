"""LoRA adapters (peft) on a causal language model, from the ``lora`` section of its config."""

from __future__ import annotations

from typing import Union

import torch

from clight.contract import ConfigError
from clight.shorten import shorten


def add_lora(net: torch.nn.Module, cfg: dict) -> torch.nn.Module:
    """``net`` wrapped by peft with LoRA adapters; a bad option is a one-line ``ConfigError``."""
    from peft import LoraConfig, get_peft_model

    r, alpha, dropout, targets = lora_options(cfg)
    # peft annotates lora_alpha as int, but its scaling is lora_alpha / r: a float alpha works
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,  # type: ignore[arg-type]
        lora_dropout=dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(net, config)
    except ValueError as exc:  # e.g. no module matches target_modules
        raise ConfigError(f"model.init_args.lora is refused by peft: {shorten(str(exc).splitlines()[0])}") from None


def lora_options(cfg: dict) -> tuple[int, float, float, Union[list[str], str]]:
    """(r, alpha, dropout, target_modules) of a ``lora`` section, each checked (one-line ``ConfigError``)."""
    field = "model.init_args.lora"
    unknown = set(cfg) - {"r", "alpha", "dropout", "target_modules"}
    if unknown:
        raise ConfigError(
            f"{field} has unknown keys {shorten(str(sorted(map(str, unknown))))}: use r, alpha, dropout, target_modules"
        )
    r, dropout, targets = cfg.get("r", 8), cfg.get("dropout", 0.0), cfg.get("target_modules", ["q_proj", "v_proj"])
    alpha = cfg.get("alpha", 2 * r if isinstance(r, int) else 16)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ConfigError(f"{field}.r must be a positive integer, got {shorten(repr(r))}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ConfigError(f"{field}.alpha must be a positive number, got {shorten(repr(alpha))}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"{field}.dropout must be in [0, 1), got {shorten(repr(dropout))}")
    names = [targets] if isinstance(targets, str) else targets  # a string is peft's regex over module names
    if not isinstance(names, list) or not names or not all(isinstance(m, str) and m for m in names):
        raise ConfigError(
            f"{field}.target_modules must be a list of module names (e.g. [q_proj, v_proj]), got {shorten(repr(targets))}"
        )
    return r, float(alpha), float(dropout), targets
