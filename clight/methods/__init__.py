from clight.methods.base import ContinualCallback
from clight.methods.regularization import EWC, LwF

__all__ = ["EWC", "ContinualCallback", "LwF"]
