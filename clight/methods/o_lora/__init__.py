"""O-LoRA: orthogonal subspace learning for language-model continual learning (Wang et al., Findings of EMNLP 2023)."""

from clight.methods.o_lora.callback import OLoRA
from clight.methods.o_lora.loss import OrthogonalityLoss, l2_norms, orthogonality

__all__ = ["OLoRA", "OrthogonalityLoss", "l2_norms", "orthogonality"]
