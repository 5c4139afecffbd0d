"""SPU: selective parameter update (Zhang et al., CVPR 2024)."""

from clight.methods.selective_update.callback import SPU
from clight.methods.selective_update.candidates import DEFAULT_FULL, DEFAULT_HEADS, FAMILIES, Family, Selection, select
from clight.methods.selective_update.importance import label_free_objective, summed_gradients, task_rows
from clight.methods.selective_update.masks import pack_bits, selected_count, top_k_mask, unpack_bits
from clight.methods.selective_update.variants import VARIANTS, ExactMask, GradientMask, VariantName

__all__ = [
    "DEFAULT_FULL",
    "DEFAULT_HEADS",
    "FAMILIES",
    "SPU",
    "VARIANTS",
    "ExactMask",
    "Family",
    "GradientMask",
    "Selection",
    "VariantName",
    "label_free_objective",
    "pack_bits",
    "select",
    "selected_count",
    "summed_gradients",
    "task_rows",
    "top_k_mask",
    "unpack_bits",
]
