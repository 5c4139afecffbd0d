"""Task-keyed layers of CLR: per-task state in dicts keyed by task (the peft pattern).

Every layer wraps one frozen backbone module and keeps, per task key, that task's own small
set of tensors; ``active`` selects which set the forward pass uses (``None``: the plain frozen
module, i.e. the backbone exactly as it was). The frozen module itself is shared by all tasks.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F


class TaskKeyedLayer(nn.Module):
    """Base of the CLR layers: per-task state, one active task key (or ``None``)."""

    def __init__(self) -> None:
        super().__init__()
        self.active: Optional[str] = None

    # subclasses implement these three
    def add_task(self, key: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def remove_task(self, key: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def task_keys(self) -> list[str]:  # pragma: no cover - interface
        raise NotImplementedError

    def task_state(self, key: str) -> dict[str, torch.Tensor]:
        """Every tensor of task ``key`` (parameters and statistics), by a name local to the layer."""
        raise NotImplementedError  # pragma: no cover - interface

    def task_parameters(self, key: str) -> list[nn.Parameter]:  # pragma: no cover - interface
        raise NotImplementedError

    def set_task(self, key: Optional[str]) -> None:
        if key is not None and key not in self.task_keys():
            raise KeyError(f"{type(self).__name__} has no state for task {key!r}; known tasks: {self.task_keys()}")
        self.active = key

    def _check_new(self, key: str) -> None:
        if not isinstance(key, str) or not key or "." in key:
            raise ValueError(f"a task key must be a non-empty string without '.', got {key!r}")
        if key in self.task_keys():
            raise ValueError(f"task {key!r} already has state in {type(self).__name__}")


def dirac_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """A depthwise identity kernel ``[C, 1, k, k]``: 1 at the centre of every channel's kernel."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"the CLR kernel size must be odd and positive (so it can be centred), got {kernel_size}")
    w = torch.zeros(channels, 1, kernel_size, kernel_size)
    w[:, 0, kernel_size // 2, kernel_size // 2] = 1.0
    return w


class ReprogrammedConv(TaskKeyedLayer):
    """``conv`` (frozen, shared) followed by task's depthwise ``k x k`` kernel (no bias, stride 1).

    With ``kernel_size=1`` the depthwise layer is a per-channel scale (what variants ``"CLR+1x1"``
    and ``"1x1-only"`` put after 1x1 convolutions).
    Each task's kernel starts as the identity (a Dirac kernel), so a fresh task computes exactly
    what the backbone computes.
    """

    def __init__(self, conv: nn.Conv2d, kernel_size: int = 3) -> None:
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"ReprogrammedConv wraps an nn.Conv2d, got {type(conv).__name__}")
        dirac_kernel(1, kernel_size)  # validates the size
        self.conv = conv
        self.channels = conv.out_channels
        self.kernel_size = kernel_size
        self.kernels = nn.ParameterDict()

    def task_keys(self) -> list[str]:
        return list(self.kernels.keys())

    def add_task(self, key: str) -> None:
        self._check_new(key)
        ref = self.conv.weight
        self.kernels[key] = nn.Parameter(dirac_kernel(self.channels, self.kernel_size).to(device=ref.device, dtype=ref.dtype))

    def remove_task(self, key: str) -> None:
        del self.kernels[key]
        if self.active == key:
            self.active = None

    def task_state(self, key: str) -> dict[str, torch.Tensor]:
        return {"kernel": self.kernels[key]}

    def task_parameters(self, key: str) -> list[nn.Parameter]:
        return [self.kernels[key]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.active is None:
            return y
        kernel = self.kernels[self.active]
        if self.kernel_size == 1:
            return y * kernel.view(1, -1, 1, 1)
        return F.conv2d(y, kernel, padding=self.kernel_size // 2, groups=self.channels)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, tasks={self.task_keys()}, active={self.active}"


class ChannelAffine(TaskKeyedLayer):
    """``linear`` (frozen, shared) followed by task's per-channel affine map ``y * a + b``.

    clight's extension of CLR to layers without a spatial kernel (transformers): the analogue
    of the 1x1 depthwise layer plus a shift, identity-initialised (a = 1, b = 0).
    """

    def __init__(self, linear: nn.Linear, bias: bool = True) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"ChannelAffine wraps an nn.Linear, got {type(linear).__name__}")
        self.linear = linear
        self.channels = linear.out_features
        self.use_bias = bias
        self.scales = nn.ParameterDict()
        self.shifts = nn.ParameterDict()

    def task_keys(self) -> list[str]:
        return list(self.scales.keys())

    def add_task(self, key: str) -> None:
        self._check_new(key)
        ref = self.linear.weight
        self.scales[key] = nn.Parameter(torch.ones(self.channels, device=ref.device, dtype=ref.dtype))
        if self.use_bias:
            self.shifts[key] = nn.Parameter(torch.zeros(self.channels, device=ref.device, dtype=ref.dtype))

    def remove_task(self, key: str) -> None:
        del self.scales[key]
        if self.use_bias:
            del self.shifts[key]
        if self.active == key:
            self.active = None

    def task_state(self, key: str) -> dict[str, torch.Tensor]:
        state = {"scale": self.scales[key]}
        if self.use_bias:
            state["shift"] = self.shifts[key]
        return state

    def task_parameters(self, key: str) -> list[nn.Parameter]:
        return [self.scales[key]] + ([self.shifts[key]] if self.use_bias else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        if self.active is None:
            return y
        y = y * self.scales[self.active]
        return y + self.shifts[self.active] if self.use_bias else y

    def extra_repr(self) -> str:
        return f"channels={self.channels}, tasks={self.task_keys()}, active={self.active}"


class TaskNorm(TaskKeyedLayer):
    """A normalisation layer with its own copy per task: affine parameters *and* running statistics.

    A new task's copy starts from the frozen backbone's layer (its pretrained parameters and
    statistics); afterwards only that task's copy changes, and only while that task is active.
    Works for any norm module (BatchNorm, timm's BatchNormAct2d, LayerNorm, GroupNorm).
    """

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.base = norm
        self.norms = nn.ModuleDict()

    def task_keys(self) -> list[str]:
        return list(self.norms.keys())

    def add_task(self, key: str) -> None:
        self._check_new(key)
        norm = copy.deepcopy(self.base)
        norm.requires_grad_(True)
        norm.train(self.training)
        self.norms[key] = norm

    def remove_task(self, key: str) -> None:
        del self.norms[key]
        if self.active == key:
            self.active = None

    def task_state(self, key: str) -> dict[str, torch.Tensor]:
        return dict(self.norms[key].state_dict(keep_vars=True))

    def task_parameters(self, key: str) -> list[nn.Parameter]:
        return list(self.norms[key].parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) if self.active is None else self.norms[self.active](x)

    def extra_repr(self) -> str:
        return f"tasks={self.task_keys()}, active={self.active}"
