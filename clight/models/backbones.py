"""Feature extractors. Every backbone exposes ``num_features`` (timm's contract) and maps an
input batch to ``[B, num_features]``; small ones can size themselves from the input shape."""

from __future__ import annotations

from typing import Any, Literal, Optional, Sequence

import torch
from torch import nn

from clight.choices import check_choice

Activation = Literal["relu", "tanh", "gelu", "leaky_relu"]
Norm = Literal["none", "batch", "layer"]
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU}
NORMS = {None: None, "none": None, "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}


class MLP(nn.Module):
    """Flatten, then ``Linear -> [norm] -> activation`` for each hidden size."""

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (256, 256),
        activation: Activation = "relu",
        norm: Optional[Norm] = None,
        in_features: Optional[int] = None,
    ) -> None:
        super().__init__()
        if not hidden_sizes or any(h < 1 for h in hidden_sizes):
            raise ValueError(f"MLP.hidden_sizes must be positive integers, got {list(hidden_sizes)}")
        check_choice("MLP.activation", activation, Activation)
        if norm is not None:
            check_choice("MLP.norm", norm, Norm)
        self.hidden_sizes, self.activation, self.norm = list(hidden_sizes), ACTIVATIONS[activation], norm
        self.num_features = self.hidden_sizes[-1]
        self.layers = nn.Sequential()
        if in_features is not None:
            self._build(in_features)

    def _build(self, in_features: int) -> None:
        layers: list[nn.Module] = []
        width = in_features
        norm = NORMS[self.norm]
        for h in self.hidden_sizes:
            layers.append(nn.Linear(width, h))
            if norm is not None:
                layers.append(norm(h))
            layers.append(self.activation())
            width = h
        self.layers = nn.Sequential(*layers)

    def adapt_to(self, input_shape: Sequence[int]) -> None:
        if len(self.layers) == 0:
            self._build(int(torch.tensor(input_shape).prod()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))


class SmallCNN(nn.Module):
    """``[Conv3x3 -> BatchNorm -> ReLU -> MaxPool]`` blocks, then global average pooling."""

    def __init__(self, channels: Sequence[int] = (32, 64), in_channels: Optional[int] = None) -> None:
        super().__init__()
        self.channels = list(channels)
        self.num_features = self.channels[-1]
        self.blocks = nn.Sequential()
        if in_channels is not None:
            self._build(in_channels)

    def _build(self, in_channels: int) -> None:
        blocks, width = [], in_channels
        for c in self.channels:
            blocks += [
                nn.Conv2d(width, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            width = c
        self.blocks = nn.Sequential(*blocks)

    def adapt_to(self, input_shape: Sequence[int]) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"SmallCNN needs image inputs [C, H, W], got shape {tuple(input_shape)}")
        if len(self.blocks) == 0:
            self._build(int(input_shape[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).mean(dim=(2, 3))


class TimmBackbone(nn.Module):
    """Any timm model by name, without its classifier, with its own preprocessing.

    ``pretrained`` uses timm's hub download (online); ``weights_file`` loads a local checkpoint
    (``.pth``/``.pt``/``.safetensors``) strictly, after renaming keys with ``key_map`` (a named
    map from ``clight.models.weights.KEY_MAPS`` or ``{regex: replacement}``). Inputs are resized
    to the model's input size, grey images repeated to its channels, and normalised with its
    mean and std, so 28x28 grey images feed an ImageNet model correctly.
    """

    mean: torch.Tensor  # buffers
    std: torch.Tensor

    def __init__(
        self,
        name: str = "resnet18",
        pretrained: bool = False,
        weights_file: Optional[str] = None,
        key_map: "Optional[str | dict[str, str]]" = None,
        image_size: Optional[int] = None,
        normalize: bool = True,
        **model_kwargs,
    ) -> None:
        super().__init__()
        import timm

        from clight.models.weights import load_local_weights

        if name not in timm.list_models() and not timm.is_model(name):
            raise ValueError(f"timm has no model named {name!r}; see timm.list_models()")
        self.name = name
        self.model = timm.create_model(name, pretrained=pretrained, num_classes=0, **model_kwargs)
        if weights_file is not None:
            classifier = _pretrained_cfg(self.model).get("classifier")
            load_local_weights(self.model, weights_file, key_map, drop_prefixes=[f"{classifier}."] if classifier else None)
        cfg = _pretrained_cfg(self.model)
        channels, height, width = cfg.get("input_size", (3, 224, 224))
        self.in_chans = channels
        self.image_size = (image_size, image_size) if image_size else (height, width)
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.5,) * channels)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.5,) * channels)).view(1, -1, 1, 1), persistent=False)
        self.num_features = self.model.num_features

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"{self.name} needs image batches [B, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] == 1 and self.in_chans != 1:
            x = x.expand(-1, self.in_chans, -1, -1)
        if tuple(x.shape[-2:]) != self.image_size:
            x = nn.functional.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        if self.normalize:
            x = (x - self.mean) / self.std
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(x))


def _pretrained_cfg(model: nn.Module) -> dict[str, Any]:
    """The ``pretrained_cfg`` timm sets on every model it creates (``create_model`` is typed as
    returning a plain ``nn.Module``)."""
    cfg = model.pretrained_cfg
    assert isinstance(cfg, dict)
    return cfg


def feature_width(backbone: nn.Module) -> int:
    """A backbone's output width: its ``num_features`` (timm's contract)."""
    width = getattr(backbone, "num_features", None)
    if not isinstance(width, int):
        raise ValueError(f"backbone {type(backbone).__name__} must expose `num_features` (its output width)")
    return width
