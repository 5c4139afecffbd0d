"""Which parameters SPU touches: candidate layers found by model family, what trains in full, heads.

A candidate layer is a module with a weight matrix; SPU trains the top-k entries of its weight
and its whole bias. The default candidates are the first layer of every transformer MLP block,
recognised by name:

- Llama-style causal LMs (SmolLM2, Llama, Mistral, Qwen): ``mlp.gate_proj`` and ``mlp.up_proj``.
  Their SwiGLU MLP computes ``down(act(gate(x)) * up(x))``: gate and up both map the hidden size
  to the intermediate size and together play the part of CLIP's ``c_fc`` (a GLU's first layer
  is one projection split in two halves), so both are candidates; ``down_proj`` is the second
  layer, which the paper's ablation found worse for retaining knowledge.
- BERT-style encoders: ``intermediate.dense``.
- timm ViTs and transformers' ``CLIPModel`` (both towers): ``mlp.fc1``.
- OpenAI's CLIP code (the released SPU code's model): ``mlp.c_fc``.

Trained in full besides the candidate biases: CLIP's visual projection (``visual_projection``,
or ``visual.proj`` in OpenAI's code), as in the paper. Heads that the model adds itself (a
``ContinualClassifier``'s ``heads``) keep the trainability the model gives them: a new head is
random and must train. Everything else is frozen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

from torch import nn

from clight.contract import ConfigError


@dataclass(frozen=True)
class Family:
    name: str
    pattern: str


FAMILIES = (
    Family("Llama-style causal LM (SwiGLU first layer: mlp.gate_proj + mlp.up_proj)", r"(^|\.)mlp\.(gate_proj|up_proj)$"),
    Family("BERT-style encoder (intermediate.dense)", r"(^|\.)intermediate\.dense$"),
    Family("timm ViT / transformers CLIP (mlp.fc1)", r"(^|\.)mlp\.fc1$"),
    Family("OpenAI CLIP code (mlp.c_fc)", r"(^|\.)mlp\.c_fc$"),
)
DEFAULT_FULL = (r"(^|\.)visual_projection\.weight$", r"(^|\.)visual\.proj$")
DEFAULT_HEADS = r"^heads\."


@dataclass
class Selection:
    """What one SPU instance trains: masked weights, parameters trained in full, heads left to the model."""

    masked: dict[str, nn.Parameter]
    full: dict[str, nn.Parameter]
    heads: list[str]
    source: list[str] = field(default_factory=list)

    @property
    def trainable_names(self) -> set[str]:
        return set(self.masked) | set(self.full)


def _weight_matrix(module: nn.Module) -> Optional[nn.Parameter]:
    weight = getattr(module, "weight", None)
    return weight if isinstance(weight, nn.Parameter) and weight.dim() >= 2 else None


def _layers(module: nn.Module, patterns: Sequence[str]) -> dict[str, nn.Module]:
    compiled = [re.compile(p) for p in patterns]
    return {
        name: m
        for name, m in module.named_modules()
        if name and _weight_matrix(m) is not None and any(p.search(name) for p in compiled)
    }


def _describe_model(module: nn.Module) -> str:
    parts = ", ".join(f"{name}: {type(child).__name__}" for name, child in module.named_children())
    return f"{type(module).__name__}({parts})"


def _unmatched(names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    return [p for p in patterns if not any(re.search(p, n) for n in names)]


def select(
    module: nn.Module,
    targets: Optional[Sequence[str]] = None,
    full: Optional[Sequence[str]] = None,
    heads: Optional[str] = DEFAULT_HEADS,
) -> Selection:
    """The parameters SPU trains in ``module``; ``ConfigError`` when there is nothing to select.

    ``targets``: regexes over module names (``re.search``) of the candidate layers, default the
    model families above. ``full``: regexes over parameter names trained in full, default CLIP's
    visual projection. ``heads``: regex over parameter names whose trainability the model decides.
    """
    params = dict(module.named_parameters())
    head_names = [n for n in params if heads and re.search(heads, n)]
    if targets is None:
        layers, source = {}, []
        for family in FAMILIES:
            found = _layers(module, [family.pattern])
            if found:
                layers.update(found)
                source.append(family.name)
    else:
        layer_names = [n for n, m in module.named_modules() if _weight_matrix(m) is not None]
        missing = _unmatched(layer_names, targets)
        if missing:
            raise ConfigError(
                f"SPU targets {missing} match no layer with a weight matrix in {_describe_model(module)}; "
                f"its layers include {layer_names[:12]}"
            )
        layers, source = _layers(module, targets), [f"targets {list(targets)}"]
    layers = {n: m for n, m in layers.items() if f"{n}.weight" not in head_names}
    if not layers:
        patterns = [f.pattern for f in FAMILIES]
        linear = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)][:12]
        raise ConfigError(
            f"SPU found no candidate layers in {_describe_model(module)}: by default it selects the first MLP layer of "
            f"every transformer block by name ({patterns}). Name the layers to select with `targets` (regexes over "
            f"module names), e.g. some of this model's Linear layers: {linear}"
        )
    masked = {f"{n}.weight": w for n, m in layers.items() if (w := _weight_matrix(m)) is not None}  # every layer has one
    full_patterns = list(DEFAULT_FULL if full is None else full)
    if full is not None and _unmatched(list(params), full_patterns):
        raise ConfigError(f"SPU full {_unmatched(list(params), full_patterns)} match no parameter of {_describe_model(module)}")
    trained_full = {f"{n}.bias": b for n, m in layers.items() if isinstance(b := getattr(m, "bias", None), nn.Parameter)}
    trained_full.update(
        {
            n: p
            for n, p in params.items()
            if any(re.search(q, n) for q in full_patterns) and n not in masked and n not in head_names
        }
    )
    return Selection(masked, trained_full, head_names, source)
