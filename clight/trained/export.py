"""A trained language model as a Hugging Face folder that plain ``transformers`` (and ``peft``) load."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Union

from clight.contract import ConfigError

PathLike = Union[str, Path]


def export_language_model(model: Any, out: PathLike, merge: bool = True) -> dict[str, str]:
    """Write ``model`` (a ``ContinualCausalLM``, as ``load_run`` returns it) to ``out`` and return
    ``{folder: what it holds}``.

    ``merge=True``: ``out`` is one plain ``transformers`` folder (``save_pretrained``) with the
    LoRA adapters applied after the last task merged into the weights, and the tokenizer:
    ``AutoModelForCausalLM.from_pretrained(out)``. ``merge=False`` with LoRA: ``out/base`` holds
    the base model and the tokenizer, and ``out/adapters`` the adapters as ``peft`` folders (one
    per adapter the model applies; ``PeftModel.from_pretrained(base, out/adapters/NAME)`` and
    ``load_adapter`` for the others); ``out/adapters.json`` names the ones applied together.
    """
    net = getattr(model, "net", None)
    if net is None or not hasattr(model, "tokenizer"):
        raise ConfigError(
            f"{type(model).__name__} is not a language model: export writes Hugging Face folders of language models "
            "(ContinualCausalLM). Load any other model with clight.load_run."
        )
    _check_plain(net)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    peft_model = net if model.has_adapters else None
    if peft_model is None or merge:
        plain = copy.deepcopy(net)
        if peft_model is not None:
            plain = plain.merge_and_unload()  # merges the adapters that are applied (peft's active adapters)
        plain.save_pretrained(out)
        model.tokenizer.save_pretrained(out)
        what = "merged weights" if peft_model is not None else "the fine-tuned weights"
        return {str(out): f"a transformers {type(plain).__name__} ({what}) with its tokenizer"}
    applied = list(peft_model.active_adapters)
    base = copy.deepcopy(peft_model).unload()  # the base model without the adapters (weights unchanged)
    base.save_pretrained(out / "base")
    model.tokenizer.save_pretrained(out / "base")
    peft_model.save_pretrained(out / "adapters", selected_adapters=applied)
    (out / "adapters.json").write_text(json.dumps({"applied_together": applied}, indent=2) + "\n")
    return {
        str(out / "base"): f"the base {type(base).__name__} with its tokenizer",
        str(out / "adapters"): f"the peft adapters {applied}, applied together after the last task",
    }


def _check_plain(net: Any) -> None:
    """A network with parts plain transformers does not know (MoE adapters' experts) cannot be exported."""
    from torch import nn

    foreign = sorted(
        {type(m).__module__ for m in net.modules() if type(m).__module__.startswith("clight.") and not isinstance(m, nn.Identity)}
    )
    if foreign:
        raise ConfigError(
            f"the model holds parts plain transformers does not know ({', '.join(foreign[:3])}): it cannot be written as a "
            "Hugging Face folder. Use it through clight.load_run."
        )
