"""Finding the layer chains whose units can be replaced: unit layer -> [norm] -> ... -> consumer.

A *unit* is one output feature of a ``Linear`` or one output channel of a ``Conv2d``. To replace
a unit, clight needs three things: the layer that produces it (incoming weights), the norm layer
right after it (whose per-unit entries must be reset), and the single layer that consumes it
(whose outgoing weights are zeroed, which removes the unit from the function: a dead unit's
removal leaves the output unchanged, a live unit's moves it by the unit's contribution).
How chains are found: ``clight.methods.plasticity.discovery``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

UNIT_LAYERS = (nn.Linear, nn.Conv2d)
PER_UNIT_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
NORMS = PER_UNIT_NORMS + (nn.LayerNorm,)
UnitLayer = Union[nn.Linear, nn.Conv2d]
NormLayer = Union[nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm]
ACTIVATIONS = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.GELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.SiLU,
    nn.ELU,
    nn.Softplus,
    nn.Mish,
    nn.Hardswish,
    nn.ReLU6,
    nn.Identity,
)
ELEMENTWISE = ACTIVATIONS + (nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout)
SPATIAL = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)

ForwardFn = Callable[[nn.Module, Any], Any]


@dataclass
class Chain:
    """One replaceable layer: ``unit`` produces the units, ``consumer`` reads them."""

    unit_name: str
    unit: UnitLayer
    consumer_name: str
    consumer: UnitLayer
    norm_name: Optional[str] = None
    norm: Optional[NormLayer] = None
    path: list[str] = field(default_factory=list)
    #: consumer input columns per unit: ``H*W`` when a conv map reaches a Linear through a flatten
    #: (channel ``c`` owns columns ``c*H*W .. (c+1)*H*W - 1``), else 1
    block_size: int = 1

    @property
    def num_units(self) -> int:
        return self.unit.out_features if isinstance(self.unit, nn.Linear) else self.unit.out_channels

    @property
    def flattened(self) -> bool:
        """Whether the consumer is a Linear reading a flattened conv map (``block_size`` columns per unit)."""
        return isinstance(self.unit, nn.Conv2d) and isinstance(self.consumer, nn.Linear)

    def consumer_columns(self, index: torch.Tensor) -> torch.Tensor:
        """The consumer's input columns (dim 1 of its weight) that read units ``index``, unit by unit."""
        if self.block_size == 1:
            return index
        offsets = torch.arange(self.block_size, device=index.device, dtype=index.dtype)
        return (index.unsqueeze(1) * self.block_size + offsets).flatten()

    def unit_activations(self, h: torch.Tensor) -> torch.Tensor:
        """The consumer's input ``h`` with the units on dim 1: a flattened conv map ``[N, C*P]``
        becomes ``[N, C, P, 1]``, so per-unit statistics average over the batch and the positions,
        as they do for a conv consumer's ``[N, C, H, W]``; other inputs are returned as they are."""
        return h.reshape(h.shape[0], self.num_units, self.block_size, 1) if self.flattened else h

    @property
    def exact(self) -> bool:
        """Whether replacing a *dead* unit leaves the output exactly unchanged (a LayerNorm mixes
        units, so its statistics change); a live unit's replacement removes its contribution."""
        return not isinstance(self.norm, nn.LayerNorm)

    def outgoing_abs_sum(self) -> torch.Tensor:
        """``sum_k |w_out[k, i]|`` per unit i (a conv consumer also sums over its kernel, a Linear
        reading a flattened map over the unit's block of columns).

        Computed every step, so done cheaply: |w| of blocks of rows into a small reused buffer
        that stays in cache, each block summed by a ones-vector product (a plain column sum of
        a large matrix is several times slower on CPU)."""
        w = self.consumer.weight.detach()
        flat = w.reshape(w.shape[0], -1)
        rows = min(512, flat.shape[0])
        buf = getattr(self, "_abs_buffer", None)
        if buf is None or buf.shape != (rows, flat.shape[1]) or buf.device != w.device or buf.dtype != w.dtype:
            buf = self._abs_buffer = torch.empty(rows, flat.shape[1], device=w.device, dtype=w.dtype)
            self._ones = torch.ones(1, rows, device=w.device, dtype=w.dtype)
        sums = torch.zeros(1, flat.shape[1], device=w.device, dtype=w.dtype)
        for i in range(0, flat.shape[0], rows):
            block = flat[i : i + rows]
            n = block.shape[0]
            torch.abs(block, out=buf[:n])
            sums.addmm_(self._ones[:, :n], buf[:n])
        sums = sums.view(-1)
        return sums if sums.numel() == self.num_units else sums.view(self.num_units, -1).sum(dim=1)

    def outgoing_abs_mean(self) -> torch.Tensor:
        """``mean_k |w_out[k, i]|`` per unit i, over the same entries ``outgoing_abs_sum`` sums."""
        w = self.consumer.weight.detach()
        return w.abs().reshape(w.shape[0], self.num_units, -1).mean(dim=(0, 2))

    def incoming_abs_mean(self) -> torch.Tensor:
        w = self.unit.weight.detach()
        return w.abs().reshape(w.shape[0], -1).mean(dim=1)

    def describe(self) -> dict:
        info = {"unit": self.unit_name, "norm": self.norm_name, "consumer": self.consumer_name, "units": self.num_units}
        if self.flattened:
            info["columns_per_unit"] = self.block_size
        return info


class ChainError(ValueError):
    pass


def declared_chain(modules: dict[str, nn.Module], spec: dict) -> Chain:
    """The chain a user declared (``{"unit": name, "consumer": name, "norm": name or None}``), checked."""
    for key in ("unit", "consumer"):
        if key not in spec:
            raise ChainError(f"a declared chain needs '{key}' (got {spec})")
    for key in ("unit", "consumer", "norm"):
        name = spec.get(key)
        if name is not None and name not in modules:
            raise ChainError(f"declared chain {key} {name!r} is not a module of the model")
    unit, consumer = modules[spec["unit"]], modules[spec["consumer"]]
    if not isinstance(unit, UNIT_LAYERS) or not isinstance(consumer, UNIT_LAYERS):
        raise ChainError(f"declared chain {spec}: unit and consumer must be Linear or Conv2d")
    norm = modules[spec["norm"]] if spec.get("norm") else None
    if norm is not None and not isinstance(norm, NORMS):
        raise ChainError(f"declared chain {spec}: norm must be BatchNorm1d/2d or LayerNorm")
    n_in = consumer.in_features if isinstance(consumer, nn.Linear) else consumer.in_channels
    n_out = unit.out_features if isinstance(unit, nn.Linear) else unit.out_channels
    block = 1
    if isinstance(unit, nn.Conv2d) and isinstance(consumer, nn.Linear):  # a flattened map: channels x positions
        if n_in % n_out:
            raise ChainError(
                f"declared chain {spec}: {spec['consumer']} reads {n_in} features, not a whole number of positions for each "
                f"of {spec['unit']}'s {n_out} channels (the map must be flattened channel by channel, [N, C*H*W])"
            )
        block = n_in // n_out
    elif n_in != n_out:
        raise ChainError(f"declared chain {spec}: {spec['unit']} has {n_out} units but {spec['consumer']} reads {n_in}")
    return Chain(spec["unit"], unit, spec["consumer"], consumer, spec.get("norm"), norm, block_size=block)
