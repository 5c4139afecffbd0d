"""Masks of the entries that train: the top-k of an importance tensor, stored at 1 bit per entry."""

from __future__ import annotations

import torch

_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def selected_count(numel: int, fraction: float) -> int:
    """How many entries of a tensor of ``numel`` entries train: ``floor(fraction * numel)``, at least 1."""
    return min(numel, max(1, int(fraction * numel)))


def top_k_mask(importance: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bool mask of the ``selected_count`` entries of ``importance`` with the largest values."""
    flat = importance.flatten()
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[torch.topk(flat, selected_count(flat.numel(), fraction), sorted=False).indices] = True
    return mask.view(importance.shape)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as ``ceil(numel / 8)`` uint8 bytes, 8 entries per byte, first entry in the top bit
    (the layout of ``numpy.packbits``)."""
    flat = mask.flatten().to(torch.uint8)
    flat = torch.nn.functional.pad(flat, (0, (-flat.numel()) % 8))
    return (flat.view(-1, 8) * _BITS.to(flat.device)).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: "torch.Size | list[int] | tuple[int, ...]") -> torch.Tensor:
    """Inverse of ``pack_bits``: the bool tensor of ``shape``."""
    numel = int(torch.Size(shape).numel())
    bits = packed.unsqueeze(1).bitwise_and(_BITS.to(packed.device)).ne(0).flatten()
    return bits[:numel].view(tuple(shape))
