"""Find the layers CLR reprograms in any network and wrap them with task-keyed layers.

Convolutional networks (any timm CNN: ResNets, EfficientNets, ... or anything built of
``nn.Conv2d``), by variant (the released code's ``--method`` name in brackets):

- ``"CLR"`` (default, the paper's CLR; ``Ghost_reduced_v1``): a 3x3 depthwise kernel after
  every convolution whose kernel is larger than 1x1 (the stem and all 3x3 / 5x5 / 7x7
  convolutions, depthwise ones included);
- ``"CLR-full"`` (the paper's CLR-Full; ``Ghost``): a 3x3 depthwise kernel after every
  convolution, 1x1 included;
- ``"CLR+1x1"`` (``Ghost_reduced_v2``): CLR's 3x3 kernels plus a per-channel scale (a 1x1
  depthwise kernel) after every 1x1 convolution;
- ``"1x1-only"`` (clight's extension, not in the released code): only the per-channel scales
  after the 1x1 convolutions, no 3x3 kernels. Its old name ``"1x1 scale"`` is still accepted,
  with a warning.

Transformers (``"affine"``, clight's extension): a per-channel affine map after the linear
layers whose qualified names match ``linear_targets``.

The reprogramming layer wraps the convolution itself (``conv -> CLR``), so whatever follows the
convolution in the block (norm, activation) follows the CLR layer: conv -> CLR -> norm -> act.
Normalisation layers are wrapped in ``TaskNorm`` so each task keeps its own.
"""

from __future__ import annotations

import re
import warnings
from typing import Iterable, Optional, Sequence

from torch import nn

from clight.methods.reprogramming.layers import ChannelAffine, ReprogrammedConv, TaskKeyedLayer, TaskNorm

CONV_VARIANTS = ("CLR", "CLR-full", "CLR+1x1", "1x1-only")
VARIANTS = CONV_VARIANTS + ("affine",)
# old name -> current name
DEPRECATED_VARIANTS = {"1x1 scale": "1x1-only"}
# where each variant comes from, recorded by CLRClassifier.describe()
VARIANT_ORIGINS = {
    "CLR": "paper (CLR); released code --method Ghost_reduced_v1, its default",
    "CLR-full": "paper (CLR-Full); released code --method Ghost",
    "CLR+1x1": "released code --method Ghost_reduced_v2 (3x3 kernels plus a scale after every 1x1 convolution)",
    "1x1-only": "clight's extension: only the scales after the 1x1 convolutions, no 3x3 kernels",
    "affine": "clight's extension for layers without a spatial kernel (transformers)",
}

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


def canonical_variant(variant: str) -> str:
    """``variant`` itself, or the current name of a deprecated one (with a warning)."""
    if variant in DEPRECATED_VARIANTS:
        new = DEPRECATED_VARIANTS[variant]
        warnings.warn(
            f"CLR variant {variant!r} is now called {new!r} (clight's extension: only the per-channel scales after 1x1 "
            f"convolutions); the released code's reduced variant, which keeps the 3x3 kernels, is 'CLR+1x1'",
            FutureWarning,
            stacklevel=3,
        )
        return new
    if variant not in VARIANTS:
        raise ValueError(f"CLR variant must be one of {VARIANTS}, got {variant!r}")
    return variant


def kernel_size_for(variant: str, conv_kernel: Sequence[int], kernel_size: Optional[int] = None) -> Optional[int]:
    """Size of the depthwise kernel ``variant`` puts after a convolution with kernel ``conv_kernel``
    (``None``: that convolution is not reprogrammed). ``kernel_size`` overrides the default
    (3; 1 for ``"1x1-only"``); the scales ``"CLR+1x1"`` puts after 1x1 convolutions are always 1x1."""
    if variant not in CONV_VARIANTS:
        raise ValueError(f"CLR variant must be one of {CONV_VARIANTS} for convolutions, got {variant!r}")
    is_1x1 = tuple(conv_kernel) == (1, 1)
    if variant == "1x1-only":
        return (kernel_size if kernel_size is not None else 1) if is_1x1 else None
    if not is_1x1 or variant == "CLR-full":
        return kernel_size if kernel_size is not None else 3
    return 1 if variant == "CLR+1x1" else None  # a 1x1 convolution under "CLR": left alone


def conv_targets(model: nn.Module, variant: str = "CLR") -> list[str]:
    """Qualified names of the convolutions ``variant`` reprograms, in module order."""
    variant = canonical_variant(variant)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d)
        and not isinstance(module, TaskKeyedLayer)
        and not _is_wrapped(name, model)
        and kernel_size_for(variant, module.kernel_size) is not None
    ]


def linear_targets(model: nn.Module, patterns: Sequence[str] = DEFAULT_LINEAR_TARGETS) -> list[str]:
    """Qualified names of the ``nn.Linear`` layers matching any regex of ``patterns``."""
    compiled = [re.compile(p) for p in patterns]
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not _is_wrapped(name, model) and any(p.search("." + name) for p in compiled)
    ]


def norm_targets(model: nn.Module, norm_types: tuple[type, ...] = BATCH_NORMS) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, norm_types) and not _is_wrapped(name, model)]


def inject(
    model: nn.Module,
    variant: str = "CLR",
    kernel_size: Optional[int] = None,
    per_task_norm: bool = True,
    linear_patterns: Sequence[str] = DEFAULT_LINEAR_TARGETS,
    norm_types: Optional[tuple[type, ...]] = None,
) -> list[str]:
    """Wrap ``model``'s target layers in place; returns the names of the wrapped layers.

    ``kernel_size``: see ``kernel_size_for``. ``per_task_norm`` wraps batch norms
    (for ``"affine"``: LayerNorm / GroupNorm / BatchNorm) so every task has its own. The wrapped
    backbone is frozen here; the task-keyed state is added later, task by task.
    """
    variant = canonical_variant(variant)
    model.requires_grad_(False)
    wrapped = []
    if variant == "affine":
        targets = linear_targets(model, linear_patterns)
        if not targets:
            raise ValueError(f"no nn.Linear layer of {type(model).__name__} matches linear_targets {list(linear_patterns)}")
        for name in targets:
            linear = model.get_submodule(name)
            assert isinstance(linear, nn.Linear)  # linear_targets names only these
            replace_module(model, name, ChannelAffine(linear))
        norms = ALL_NORMS if norm_types is None else norm_types
    else:
        targets = conv_targets(model, variant)
        if not targets:
            raise ValueError(f"{type(model).__name__} has no convolution that variant {variant!r} reprograms")
        for name in targets:
            conv = model.get_submodule(name)
            assert isinstance(conv, nn.Conv2d)  # conv_targets names only convolutions ...
            size = kernel_size_for(variant, conv.kernel_size, kernel_size)
            assert size is not None  # ... that the variant reprograms
            replace_module(model, name, ReprogrammedConv(conv, size))
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
