"""Seeds derived from the run seed, identical in every process and every resumed run."""

from __future__ import annotations

import torch


def derive_seed(seed: int, *salt: int) -> int:
    """A 63-bit seed from the run seed and integer salts (Python hashes int tuples the same way
    in every process, unlike strings)."""
    return hash((seed,) + salt) & 0x7FFF_FFFF_FFFF_FFFF


def seeded_generator(seed: int, *salt: int) -> torch.Generator:
    """A CPU generator for one purpose (salt) of one run (seed)."""
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, *salt))
    return g
