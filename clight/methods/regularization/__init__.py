"""Regularisation methods: EWC (Kirkpatrick et al., 2017), LwF (Li & Hoiem, 2017), SI (Zenke et
al., 2017) and MAS (Aljundi et al., 2018).

Each adds a named loss term to the module (logged as ``train/ewc``, ``train/lwf``, ``train/si``,
``train/mas``) and keeps its state (anchors, importances, the previous model) in checkpoints.
EWC computes its Fisher from the whole of a task's data on every rank; SI accumulates from the
gradients DDP has already averaged; MAS shares the task's samples out across ranks and sums.
Every rank holds the same state.
"""

from clight.methods.regularization.ewc import EWC, EWCMode
from clight.methods.regularization.fisher import diagonal_fisher, per_sample_sum
from clight.methods.regularization.lwf import LwF, distillation
from clight.methods.regularization.mas import MAS, squared_output_norm
from clight.methods.regularization.quadratic import QuadraticPenalty
from clight.methods.regularization.si import SI

__all__ = [
    "EWC",
    "MAS",
    "SI",
    "EWCMode",
    "LwF",
    "QuadraticPenalty",
    "diagonal_fisher",
    "distillation",
    "per_sample_sum",
    "squared_output_norm",
]
