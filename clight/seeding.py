"""Seeds derived from the run seed: identical in every process, every resumed run and every
Python version (``numpy.random.SeedSequence``, never ``hash()``)."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch


def _entropy(value: int) -> int:
    # SeedSequence takes non-negative integers; fold negative salts (e.g. -1 for "all tasks")
    # onto odd numbers so every integer keeps its own stream.
    return 2 * value if value >= 0 else -2 * value - 1


def derive_seed(seed: int, *salt: int) -> int:
    """A 63-bit seed for one purpose (``salt``) of one run (``seed``)."""
    words = np.random.SeedSequence([_entropy(int(seed)), *(_entropy(int(s)) for s in salt)]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31 | int(words[1]) >> 1) & 0x7FFF_FFFF_FFFF_FFFF


def seeded_generator(seed: int, *salt: int) -> torch.Generator:
    """A CPU generator for one purpose (salt) of one run (seed)."""
    generator = torch.Generator()
    generator.manual_seed(derive_seed(seed, *salt))
    return generator


def reseed_globals(seed: int, *salt: int) -> None:
    """Reseed Python's, NumPy's and torch's global generators from (seed, salt)."""
    L.seed_everything(derive_seed(seed, *salt) & 0x7FFF_FFFF, workers=True, verbose=False)
