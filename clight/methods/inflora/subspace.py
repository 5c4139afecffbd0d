"""InfLoRA's protected input subspaces (DualGPM) and the design of a new adapter's A from them.

Per group of LoRA layers, ``Subspace`` holds the input directions earlier tasks use: their basis
(``remove``) or, once they fill more than half of the ``d`` dimensions, the basis of the free rest
(``retain``), whichever is smaller, as DualGPM keeps it. ``C`` below is a task's ``mean x x^T``.

``design_rows``: the new task's A rows are the top-``r`` directions of the task's representation
projected out of the protected subspace: eigenvectors of ``F C F`` (``F`` the projection onto the
free space), i.e. the left singular vectors of the projected representation ``F H`` (paper). The
released code takes the left singular vectors of ``F C`` (not symmetric: ordered differently).

``update``: after a task, GPM's energy criterion with threshold ``epsilon``: add the fewest new
directions (top eigenvectors of ``F C F``) so that the share of the task's energy inside the
protected subspace reaches ``epsilon`` (``retain``: drop free directions while the free share is
at least ``1 - epsilon``). Energy: the paper's ``||H||_F^2`` (eigenvalues of ``C``); the released
code sums the squared singular values of ``C`` (the 4th powers of ``H``'s) and, after the first
task, keeps one direction fewer than the criterion asks (its ``#+1`` is commented out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

Variant = Literal["paper", "released_code"]
Kind = Literal["remove", "retain"]
_EPS = torch.finfo(torch.float64).eps


@dataclass
class Subspace:
    """``basis`` ``[d, k]`` (orthonormal columns, float64): the protected directions (``remove``)
    or the free ones (``retain``)."""

    basis: torch.Tensor
    kind: Kind

    @property
    def dim(self) -> int:
        return int(self.basis.shape[0])

    @property
    def protected_dims(self) -> int:
        k = int(self.basis.shape[1])
        return k if self.kind == "remove" else self.dim - k

    def free_projection(self) -> torch.Tensor:
        outer = self.basis @ self.basis.T
        return torch.eye(self.dim, dtype=outer.dtype) - outer if self.kind == "remove" else outer

    def protected_projection(self) -> torch.Tensor:
        return torch.eye(self.dim, dtype=torch.float64) - self.free_projection()


def _spectrum(matrix: torch.Tensor, variant: Variant) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies (descending) and their directions: eigenvalues of a symmetric PSD matrix (paper)
    or squared singular values and left singular vectors (released code)."""
    if variant == "paper":
        values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
        return values.flip(0).clamp_min(0), vectors.flip(1)
    u, s, _ = torch.linalg.svd(matrix, full_matrices=False)
    return s.pow(2), u


def _projected(cov: torch.Tensor, free: torch.Tensor, variant: Variant) -> torch.Tensor:
    return free @ cov @ free if variant == "paper" else free @ cov


def design_rows(cov: torch.Tensor, space: Optional[Subspace], rank: int, variant: Variant = "paper") -> torch.Tensor:
    """Unit rows ``[rank, d]`` (float64) spanning the top directions of the task's representation
    outside ``space``. Paper: rows past the free directions (zero energy left) are zero, and the
    rows are projected onto the free space once more, so they are orthogonal to ``space`` up to
    float64 rounding."""
    d = cov.shape[0]
    free = space.free_projection() if space is not None else torch.eye(d, dtype=torch.float64)
    energy, vectors = _spectrum(_projected(cov, free, variant), variant)
    rows = torch.zeros(rank, d, dtype=torch.float64)
    take = min(rank, d)
    rows[:take] = vectors[:, :take].T
    if variant == "paper":
        rows[:take][energy[:take] <= energy[0] * d * _EPS] = 0.0
        rows = rows @ free
    return rows


def threshold(task: int, num_tasks: int, start: float, end: float) -> float:
    """The energy threshold after task ``task``: from ``start`` rising linearly towards ``end``."""
    return (end - start) * task / num_tasks + start


def update(cov: torch.Tensor, space: Optional[Subspace], epsilon: float, variant: Variant = "paper") -> Subspace:
    """The protected subspace after a task whose representation is ``cov`` (see the module docstring)."""
    d = cov.shape[0]
    total = torch.trace(cov) if variant == "paper" else torch.linalg.svdvals(cov).pow(2).sum()
    total = float(total) if float(total) > 0 else 1.0
    if space is None:
        energy, vectors = _spectrum(cov, variant)
        below = int((torch.cumsum(energy, 0) / total < epsilon).sum())
        k = min(max(below + (1 if variant == "paper" else 0), 1), d)
        return _balanced(Subspace(vectors[:, :k], "remove"))
    energy, vectors = _spectrum(_projected(cov, space.free_projection(), variant), variant)
    usable = int((energy > energy[0] * d * _EPS).sum()) if variant == "paper" else len(energy)
    if space.kind == "remove":
        share, r = (total - float(energy.sum())) / total, 0  # the task's energy already inside the subspace
        while r < usable and share < epsilon:
            share, r = share + float(energy[r]) / total, r + 1
        if r == 0:
            return space
        return _balanced(Subspace(torch.cat([space.basis, vectors[:, :r]], 1)[:, :d], "remove"))
    share, r = float(energy.sum()) / total, 0  # the task's energy in the free subspace
    while r < usable and share >= 1 - epsilon:
        share, r = share - float(energy[r]) / total, r + 1
    if r == 0:
        return space
    top = vectors[:, :r]
    remaining = space.basis - top @ (top.T @ space.basis)
    u = torch.linalg.svd(remaining, full_matrices=False).U
    return Subspace(u[:, : space.basis.shape[1] - r], "retain")


def _balanced(space: Subspace) -> Subspace:
    """DualGPM's switch: keep the complement instead once the protected directions exceed d / 2."""
    k = space.basis.shape[1]
    if space.kind == "remove" and k > space.dim / 2:
        u = torch.linalg.svd(space.basis, full_matrices=True).U
        return Subspace(u[:, k:], "retain")
    return space
