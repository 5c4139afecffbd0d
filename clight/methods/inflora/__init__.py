"""InfLoRA: interference-free low-rank adaptation (Liang and Li, CVPR 2024)."""

from clight.methods.inflora.callback import InfLoRA
from clight.methods.inflora.subspace import Subspace, design_rows, threshold, update

__all__ = ["InfLoRA", "Subspace", "design_rows", "threshold", "update"]
