from clight.methods.base import ContinualCallback
from clight.methods.regularization import EWC, MAS, SI, LwF

__all__ = ["EWC", "MAS", "SI", "ContinualCallback", "LwF"]
