"""The quadratic penalty SI and MAS share: ``sum_i importance_i * (theta_i - anchor_i)^2``."""

from __future__ import annotations

from typing import Any, Optional

import torch


class QuadraticPenalty:
    """Importances and anchors by parameter name; the penalty covers the trainable parameters
    that have an importance. The (parameter, anchor, importance) triples are built at the first
    step after the state or the device changed, not on every step."""

    def __init__(self) -> None:
        self.importance: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        self._terms: Optional[tuple[torch.device, list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]]] = None

    def invalidate(self) -> None:
        """Forget the cached terms (the trainable parameters, the state or the device changed)."""
        self._terms = None

    def terms(self, module: Any) -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(name, parameter, anchor, importance) of every trainable parameter with an importance."""
        device = next(module.parameters()).device
        if self._terms is None or self._terms[0] != device:
            params = dict(module.named_parameters())
            self._terms = (
                device,
                [
                    (name, params[name], self.anchor[name].to(device), importance.to(device))
                    for name, importance in self.importance.items()
                    if name in params and params[name].requires_grad
                ],
            )
        return self._terms[1]

    def value(self, module: Any) -> torch.Tensor:
        total = next(module.parameters()).new_zeros(())
        for _, param, anchor, importance in self.terms(module):
            total = total + (importance * (param - anchor).pow(2)).sum()
        return total

    def gradients(self, module: Any) -> dict[str, torch.Tensor]:
        """``d value / d theta = 2 * importance * (theta - anchor)`` by parameter name."""
        return {name: 2 * importance * (param.detach() - anchor) for name, param, anchor, importance in self.terms(module)}

    def set_anchor(self, module: Any, names: Optional[set[str]] = None) -> None:
        """Anchor the parameters that have an importance (and ``names``) at their present values."""
        keep = set(self.importance) | (names or set())
        self.anchor = {n: p.detach().clone() for n, p in module.named_parameters() if n in keep}
        self.invalidate()

    def state_dict(self) -> dict:
        return {"importance": dict(self.importance), "anchor": dict(self.anchor)}

    def load_state_dict(self, state: dict) -> None:
        self.importance, self.anchor = dict(state["importance"]), dict(state["anchor"])
        self.invalidate()
