"""Find the layers CLR reprograms in any network and wrap them with task-keyed layers.

Convolutional networks (any timm CNN: ResNets, EfficientNets, ... or anything built of
``nn.Conv2d``), by variant:

- ``"CLR"`` (default, the paper): a 3x3 depthwise kernel after every convolution whose kernel
  is larger than 1x1 (the stem and all 3x3 / 5x5 / 7x7 convolutions, depthwise ones included);
- ``"CLR-full"``: a 3x3 depthwise kernel after every convolution, 1x1 included;
- ``"1x1 scale"``: a per-channel scale (1x1 depthwise kernel) after every 1x1 convolution.

Transformers (``"affine"``, clight's extension): a per-channel affine map after the linear
layers whose qualified names match ``linear_targets``.

The reprogramming layer wraps the convolution itself (``conv -> CLR``), so whatever follows the
convolution in the block (norm, activation) follows the CLR layer: conv -> CLR -> norm -> act.
Normalisation layers are wrapped in ``TaskNorm`` so each task keeps its own.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional, Sequence

from torch import nn

from clight.methods.reprogramming.layers import ChannelAffine, ReprogrammedConv, TaskKeyedLayer, TaskNorm

CONV_VARIANTS = ("CLR", "CLR-full", "1x1 scale")
VARIANTS = CONV_VARIANTS + ("affine",)

# Linear layers the affine variant targets by default: attention projections and the first MLP
# layer of timm ViTs (qkv, mlp.fc1) and Hugging Face BERT-style encoders (query/key/value,
# intermediate.dense).
DEFAULT_LINEAR_TARGETS = (r"\.qkv$", r"\.mlp\.fc1$", r"\.(query|key|value)$", r"\.intermediate\.dense$")

BATCH_NORMS = (nn.modules.batchnorm._BatchNorm,)
ALL_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _is_wrapped(name: str, model: nn.Module) -> bool:
    """True when ``name`` lies inside a task-keyed layer already (never wrap twice)."""
    parts = name.split(".")
    module = model
    for part in parts[:-1]:
        module = getattr(module, part)
        if isinstance(module, TaskKeyedLayer):
            return True
    return False


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    new.train(root.get_submodule(name).training)  # a wrapper keeps the train/eval mode of what it wraps
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def conv_targets(model: nn.Module, variant: str = "CLR") -> list[str]:
    """Qualified names of the convolutions ``variant`` reprograms, in module order."""
    if variant not in CONV_VARIANTS:
        raise ValueError(f"CLR variant must be one of {CONV_VARIANTS} for convolutions, got {variant!r}")
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d) or isinstance(module, TaskKeyedLayer) or _is_wrapped(name, model):
            continue
        is_1x1 = tuple(module.kernel_size) == (1, 1)
        if variant == "CLR-full" or (variant == "CLR" and not is_1x1) or (variant == "1x1 scale" and is_1x1):
            names.append(name)
    return names


def linear_targets(model: nn.Module, patterns: Sequence[str] = DEFAULT_LINEAR_TARGETS) -> list[str]:
    """Qualified names of the ``nn.Linear`` layers matching any regex of ``patterns``."""
    compiled = [re.compile(p) for p in patterns]
    return [
        name for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not _is_wrapped(name, model) and any(p.search("." + name) for p in compiled)
    ]


def norm_targets(model: nn.Module, norm_types: tuple[type, ...] = BATCH_NORMS) -> list[str]:
    return [
        name for name, module in model.named_modules()
        if isinstance(module, norm_types) and not _is_wrapped(name, model)
    ]


def inject(
    model: nn.Module,
    variant: str = "CLR",
    kernel_size: Optional[int] = None,
    per_task_norm: bool = True,
    linear_patterns: Sequence[str] = DEFAULT_LINEAR_TARGETS,
    norm_types: Optional[tuple[type, ...]] = None,
) -> list[str]:
    """Wrap ``model``'s target layers in place; returns the names of the wrapped layers.

    ``kernel_size`` defaults to 3 (1 for ``"1x1 scale"``). ``per_task_norm`` wraps batch norms
    (for ``"affine"``: LayerNorm / GroupNorm / BatchNorm) so every task has its own. The wrapped
    backbone is frozen here; the task-keyed state is added later, task by task.
    """
    if variant not in VARIANTS:
        raise ValueError(f"CLR variant must be one of {VARIANTS}, got {variant!r}")
    model.requires_grad_(False)
    wrapped = []
    if variant == "affine":
        targets = linear_targets(model, linear_patterns)
        if not targets:
            raise ValueError(f"no nn.Linear layer of {type(model).__name__} matches linear_targets {list(linear_patterns)}")
        for name in targets:
            replace_module(model, name, ChannelAffine(model.get_submodule(name)))
        norms = ALL_NORMS if norm_types is None else norm_types
    else:
        k = kernel_size if kernel_size is not None else (1 if variant == "1x1 scale" else 3)
        targets = conv_targets(model, variant)
        if not targets:
            raise ValueError(f"{type(model).__name__} has no convolution that variant {variant!r} reprograms")
        for name in targets:
            replace_module(model, name, ReprogrammedConv(model.get_submodule(name), k))
        norms = BATCH_NORMS if norm_types is None else norm_types
    wrapped += targets
    if per_task_norm:
        for name in norm_targets(model, norms):
            replace_module(model, name, TaskNorm(model.get_submodule(name)))
            wrapped.append(name)
    return wrapped


def task_layers(model: nn.Module) -> list[TaskKeyedLayer]:
    return [m for m in model.modules() if isinstance(m, TaskKeyedLayer)]


def add_task(model: nn.Module, key: str) -> None:
    for layer in task_layers(model):
        layer.add_task(key)


def remove_task(model: nn.Module, key: str) -> None:
    for layer in task_layers(model):
        layer.remove_task(key)


def set_task(model: nn.Module, key: Optional[str]) -> None:
    """Make task ``key``'s state active in every layer (``None``: the plain backbone)."""
    for layer in task_layers(model):
        layer.set_task(key)


def task_parameters(model: nn.Module, key: str) -> Iterable[nn.Parameter]:
    for layer in task_layers(model):
        yield from layer.task_parameters(key)
