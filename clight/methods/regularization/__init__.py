"""Regularisation baselines: EWC (Kirkpatrick et al., 2017) and LwF (Li & Hoiem, 2017).

Both add a named loss term to the module (logged as ``train/ewc`` / ``train/lwf``) and keep
their state (anchors, Fisher, the previous model) in checkpoints. Both compute their state from
the whole of a task's data, identically on every rank, so no communication is needed.
"""

from clight.methods.regularization.ewc import EWC, EWCMode
from clight.methods.regularization.fisher import diagonal_fisher
from clight.methods.regularization.lwf import LwF, distillation

__all__ = ["EWC", "EWCMode", "LwF", "diagonal_fisher", "distillation"]
