"""O-LoRA's two terms: orthogonality of the new adapter's A to the earlier ones', and an L2 norm.

Orthogonality, per LoRA layer, with ``A_t`` the new adapter's ``[r, d]`` down-projection and
``A_old`` the earlier tasks' stacked ``[t r, d]`` (which is how the released code keeps them: one
concatenated ``lora`` adapter beside ``loranew``): the entries of ``A_t A_old^T`` squared and
summed (the paper's ``sum_jk O[j,k]^2``), or their absolute values summed (the released code's
``torch.abs(torch.mm(lora_A, loranew_A.T)).sum()``). Summing over the concatenation is summing
over the earlier tasks one by one, so both read the same as the paper's sum over i < t.
"""

from __future__ import annotations

from typing import Iterable, Literal, Sequence

import torch

Penalty = Literal["squared", "abs"]


def orthogonality(new: torch.Tensor, old: torch.Tensor, penalty: Penalty = "squared") -> torch.Tensor:
    """``sum((new @ old^T)**2)`` or ``sum(|new @ old^T|)`` over the last two dimensions and any batch dimension."""
    product = new @ old.transpose(-1, -2)
    return product.pow(2).sum() if penalty == "squared" else product.abs().sum()


def l2_norms(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """The released code's L2 term: the sum of each matrix's Frobenius norm (not squared)."""
    return torch.stack([p.norm(p=2) for p in parameters]).sum()


class OrthogonalityLoss:
    """The orthogonality term summed over LoRA layers, layers of one shape in one batched product.

    ``pairs``: per layer, the new adapter's A (a trainable parameter) and the earlier adapters'
    rows stacked (detached). The stacks are moved to the parameters' device on first use there.
    """

    def __init__(self, pairs: Sequence[tuple[torch.nn.Parameter, torch.Tensor]], penalty: Penalty) -> None:
        self.penalty = penalty
        groups: dict[tuple, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}  # (parameters, earlier rows)
        for new, old in pairs:
            params, olds = groups.setdefault((tuple(new.shape), tuple(old.shape)), ([], []))
            params.append(new)
            olds.append(old.detach())
        self.groups = [(params, torch.stack(olds)) for params, olds in groups.values()]

    @property
    def empty(self) -> bool:
        return not self.groups or self.groups[0][1].shape[1] == 0

    def __call__(self) -> torch.Tensor:
        total = None
        for i, (params, old) in enumerate(self.groups):
            if old.device != params[0].device or old.dtype != params[0].dtype:
                old = old.to(device=params[0].device, dtype=params[0].dtype)
                self.groups[i] = (params, old)
            value = orthogonality(torch.stack(params), old, self.penalty)
            total = value if total is None else total + value
        assert total is not None, "an empty loss is never called (its caller checks empty)"
        return total
