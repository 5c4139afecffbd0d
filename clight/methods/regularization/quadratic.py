"""The quadratic penalty SI and MAS share: ``sum_i importance_i * (theta_i - anchor_i)^2``."""

from __future__ import annotations

from typing import Any, Optional

import torch


class _KnownGradient(torch.autograd.Function):
    """``value``, whose gradient with respect to ``params`` is ``2 * weighted`` (times the incoming
    gradient): the penalty's value and gradient come from one pass over the weights, without a graph."""

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor, weighted: list, *params: torch.Tensor) -> torch.Tensor:
        ctx.weighted = weighted
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        return (None, None, *torch._foreach_mul(ctx.weighted, 2 * grad_output))


class QuadraticPenalty:
    """Importances and anchors by parameter name; the penalty covers the trainable parameters
    that have an importance. The (parameter, anchor, importance) triples are built at the first
    step after the state or the device changed, not on every step. ``value`` keeps
    ``importance * (theta - anchor)`` of its last call (``weighted``): half the penalty's gradient."""

    def __init__(self) -> None:
        self.importance: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        self.weighted: dict[str, torch.Tensor] = {}
        self._terms: Optional[tuple[torch.device, list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]]] = None

    def invalidate(self) -> None:
        """Forget the cached terms (the trainable parameters, the state or the device changed)."""
        self._terms = None
        self.weighted = {}

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
        terms = self.terms(module)
        if not terms:
            return next(module.parameters()).new_zeros(())
        names, params, anchors, importances = zip(*terms)
        with torch.no_grad():
            differences = torch._foreach_sub([p.detach() for p in params], list(anchors))
            weighted = torch._foreach_mul(differences, list(importances))
            total = torch.stack([torch.dot(w.view(-1), d.view(-1)) for w, d in zip(weighted, differences)]).sum()
        self.weighted = dict(zip(names, weighted))
        return _KnownGradient.apply(total, list(weighted), *params)

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
