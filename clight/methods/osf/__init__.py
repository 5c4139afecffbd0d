"""OSF: peft's orthogonal subspace fine-tuning (Nayak et al., 2025) as a continual-learning method."""

from clight.methods.osf.callback import OSF, preserved_ranks

__all__ = ["OSF", "preserved_ranks"]
