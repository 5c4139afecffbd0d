"""Gradient-free methods on frozen pretrained backbones: SimpleCIL and APER (class prototypes with a
cosine classifier; APER after first-session adaptation) and RanPAC (random projection and a ridge
classifier from accumulated Gram statistics). See ``docs/methods/prototypes.md``."""

from clight.methods.prototypes.adaptation import ADAPTATIONS, FirstSessionBackbone
from clight.methods.prototypes.heads import AdaptingHead, CosineHead, CosinePrototypeHead, RandomProjectionHead
from clight.methods.prototypes.method import ClassStatisticsMethod
from clight.methods.prototypes.petl import SSF, ParallelAdapter, insert_adapters, insert_ssf
from clight.methods.prototypes.ranpac import RanPAC
from clight.methods.prototypes.ridge import PAPER_GRID, ridge_solution, validation_errors, validation_rows
from clight.methods.prototypes.simplecil import APER, SimpleCIL

__all__ = [
    "ADAPTATIONS",
    "APER",
    "AdaptingHead",
    "ClassStatisticsMethod",
    "CosineHead",
    "CosinePrototypeHead",
    "FirstSessionBackbone",
    "PAPER_GRID",
    "ParallelAdapter",
    "RanPAC",
    "RandomProjectionHead",
    "SSF",
    "SimpleCIL",
    "insert_adapters",
    "insert_ssf",
    "ridge_solution",
    "validation_errors",
    "validation_rows",
]
