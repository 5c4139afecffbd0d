"""Parameter-efficient modules for first-session adaptation: SSF on any network, AdaptFormer
adapters on transformer blocks. Both start as the identity map of what they wrap (up to SSF's
small random init), so the adapted copy starts as the pretrained network."""

from __future__ import annotations

import math

import torch
from torch import nn

from clight.methods.moe_adapters.targets import transformer_blocks
from clight.methods.reprogramming.injection import replace_module

NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _channels(module: nn.Module) -> tuple[int, int]:
    """(output channels, the output dimension holding them) of a layer SSF follows."""
    if isinstance(module, nn.Conv2d):
        return module.out_channels, 1
    if isinstance(module, nn.Linear):
        return module.out_features, -1
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features, 1
    if isinstance(module, nn.GroupNorm):
        return module.num_channels, 1
    return int(module.normalized_shape[-1]), -1  # LayerNorm


class SSF(nn.Module):
    """Scale and shift the output of ``layer`` per channel (Lian et al., NeurIPS 2022):
    ``y * gamma + beta`` with ``gamma ~ N(1, 0.02)`` and ``beta ~ N(0, 0.02)`` as in the released SSF code."""

    def __init__(self, layer: nn.Module, generator: torch.Generator) -> None:
        super().__init__()
        self.layer = layer
        channels, self.dim = _channels(layer)
        self.scale = nn.Parameter(1.0 + 0.02 * torch.randn(channels, generator=generator))
        self.shift = nn.Parameter(0.02 * torch.randn(channels, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x)
        shape = [1] * y.dim()
        shape[self.dim] = -1
        return y * self.scale.view(shape) + self.shift.view(shape)


def ssf_targets(network: nn.Module) -> list[str]:
    """Every convolution, linear layer and norm of ``network``: SSF follows each of them."""
    return [
        name
        for name, module in network.named_modules()
        if name and isinstance(module, (nn.Conv2d, nn.Linear) + NORMS) and not isinstance(module, SSF)
    ]


def insert_ssf(network: nn.Module, generator: torch.Generator) -> list[nn.Parameter]:
    """Follow every target layer of ``network`` with an SSF; returns the new parameters."""
    added = []
    for name in ssf_targets(network):
        ssf = SSF(network.get_submodule(name), generator)
        replace_module(network, name, ssf)
        added += [ssf.scale, ssf.shift]
    return added


class ParallelAdapter(nn.Module):
    """AdaptFormer's adapter beside a block's MLP: ``mlp(x) + scale * up(dropout(relu(down(x))))``,
    ``down`` Kaiming-uniform and ``up`` zero at start (the released APER code's ``lora`` init), so the
    block computes exactly what it did before training."""

    def __init__(
        self, mlp: nn.Module, dim: int, bottleneck: int, scale: float, dropout: float, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.mlp = mlp
        self.down, self.up = nn.Linear(dim, bottleneck), nn.Linear(bottleneck, dim)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.dropout = nn.Dropout(dropout)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x) + self.scale * self.up(self.dropout(torch.relu(self.down(x))))


def adapter_blocks(network: nn.Module) -> list[tuple[str, str]]:
    """``(block name, norm before its MLP)`` of every transformer block of ``network``."""
    return transformer_blocks(network)


def insert_adapters(
    network: nn.Module, generator: torch.Generator, bottleneck: int = 64, scale: float = 0.1, dropout: float = 0.1
) -> list[nn.Parameter]:
    """Put a ``ParallelAdapter`` beside the MLP of every transformer block; returns the new parameters."""
    added = []
    for name, tap in adapter_blocks(network):
        block = network.get_submodule(name)
        dim = int(getattr(block, tap).normalized_shape[-1])
        adapter = ParallelAdapter(block.mlp, dim, bottleneck, scale, dropout, generator)
        replace_module(block, "mlp", adapter)
        added += list(adapter.down.parameters()) + list(adapter.up.parameters())
    return added
