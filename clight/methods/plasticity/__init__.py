"""Plasticity methods (docs/methods/plasticity.md): continual backprop, ReDo, shrink & perturb, and a monitor."""

from clight.methods.plasticity.chain import Chain, ChainError
from clight.methods.plasticity.continual_backprop import ContinualBackprop
from clight.methods.plasticity.discovery import find_chains
from clight.methods.plasticity.monitor import PlasticityMonitor, measure
from clight.methods.plasticity.redo import ReDo
from clight.methods.plasticity.shrink_perturb import ShrinkPerturb
from clight.methods.plasticity.units import replace_units

__all__ = [
    "Chain",
    "ChainError",
    "ContinualBackprop",
    "PlasticityMonitor",
    "ReDo",
    "ShrinkPerturb",
    "find_chains",
    "measure",
    "replace_units",
]
