"""Optimizers clight adds to torch's.

``AdamPerEntryStep``: Adam whose step count (the ``t`` of the bias corrections) is kept per
entry instead of per tensor, as in the optimizer the continual-backprop code ships (``AdamGnT``
in shibhansh/loss-of-plasticity). When continual backprop or ReDo replaces a unit, it zeroes the
Adam state of the changed entries; with a per-entry step that includes the step, so the entry's
bias correction restarts and its first update is the learning rate, like any fresh parameter's.
torch's Adam keeps one step per tensor: a reset entry is then bias-corrected with the tensor's
large step count while its moments restart from 0, and its first update is about
``0.1 / sqrt(0.001) = 3.16`` times the learning rate.

Use it from YAML like any torch optimizer::

    model:
      init_args:
        optimizer:
          class_path: clight.optim.AdamPerEntryStep
          init_args: {lr: 1.0e-3}
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.optim.optimizer import ParamsT


class AdamPerEntryStep(torch.optim.Optimizer):
    """Adam (with ``weight_decay`` as an L2 term and optional ``amsgrad``, as ``torch.optim.Adam``)
    whose ``state["step"]`` is a tensor of the parameter's shape, one count per entry.

    Until an entry's state is reset it computes what ``torch.optim.Adam`` computes (to float
    rounding). The released ``AdamGnT`` adds ``eps`` before the second-moment bias correction
    (``sqrt(v) + eps``, the 2014 paper's form); this class adds it after, as torch does, so
    swapping it for torch's Adam changes nothing but the reset behaviour.
    """

    #: read by ``clight.methods.plasticity.optim_state.step_count_kind``
    per_entry_step = True

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        if lr < 0:
            raise ValueError(f"AdamPerEntryStep: lr must be >= 0, got {lr}")
        if eps < 0:
            raise ValueError(f"AdamPerEntryStep: eps must be >= 0, got {eps}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"AdamPerEntryStep: betas must lie in [0, 1), got {tuple(betas)}")
        if weight_decay < 0:
            raise ValueError(f"AdamPerEntryStep: weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad))

    @torch.no_grad()
    # torch's stub types a closure as returning a float; it returns the loss tensor (as here, and in torch's own optimizers)
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None) -> Optional[torch.Tensor]:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamPerEntryStep does not support sparse gradients; use torch.optim.SparseAdam")
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
                step.add_(1)
                if group["weight_decay"] != 0:
                    grad = grad.add(p, alpha=group["weight_decay"])
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                second = exp_avg_sq
                if group["amsgrad"]:
                    torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
                    second = state["max_exp_avg_sq"]
                bias_correction1 = 1 - torch.pow(beta1, step)
                bias_correction2_sqrt = (1 - torch.pow(beta2, step)).sqrt()
                denom = (second.sqrt() / bias_correction2_sqrt.to(p.dtype)).add_(group["eps"])
                p.addcdiv_(exp_avg / bias_correction1.to(p.dtype), denom, value=-group["lr"])
        return loss
