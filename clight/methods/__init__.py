from clight.methods.base import ContinualCallback

__all__ = ["ContinualCallback"]
