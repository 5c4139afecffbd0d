"""One block's mixture of experts (``MoELayer``) and the wrapper that adds it to the block (``MoEBlock``).

Every sample carries a route: the index of the task whose router it goes through, or -1 for
"none" (the sample sees the pretrained block, bit for bit). The routes of the forward pass in
progress sit in a ``RouteState`` that every layer of one MoEAdapters instance shares; the
network-level routing (``routing.py``) fills it before each forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
from torch import nn

from clight.methods.moe_adapters.experts import BottleneckAdapter, top_k_gates

RouterInput = Literal["first", "mean", "token"]


@dataclass
class RouteState:
    """The routes of the forward pass in progress, shared by one instance's layers.

    ``rows``: ``[B]`` task index per sample (-1: none), ``None`` outside a routed forward (every
    layer then leaves its block alone). ``token_mask``: ``[B, L]`` real tokens (for counting
    expert use per token). Set between forwards by the method: ``fit_task``, the task being
    trained (inside a fit every sample goes through its router, or through its own task's router
    as given by ``batch_rows``; outside a fit DDAS decides); ``count_task``, the task whose expert
    use is counted while training.
    """

    rows: Optional[torch.Tensor] = None
    token_mask: Optional[torch.Tensor] = None
    fit_task: Optional[int] = None
    batch_rows: Optional[torch.Tensor] = None
    count_task: Optional[int] = None


class MoELayer(nn.Module):
    """``num_experts`` bottleneck adapters shared by all tasks and one top-k router per task.

    ``router_input``: ``first`` (the class token, the paper's), ``mean`` (mean over tokens, for
    ViTs without a class token) or ``token`` (each token routed on its own: causal LMs, where a
    whole-sequence route would let a position see the tokens after it). A sample's experts see
    all of its tokens (per-token routing: each token its own experts).
    """

    frozen: torch.Tensor  # buffer

    def __init__(
        self,
        dim: int,
        num_tasks: int,
        state: RouteState,
        num_experts: int = 22,
        top_k: int = 2,
        bottleneck: int = 64,
        scale: float = 0.1,
        dropout: float = 0.1,
        router_input: RouterInput = "first",
        noisy_gating: bool = True,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        super().__init__()
        self.state, self.top_k, self.router_input, self.noisy_gating = state, top_k, router_input, noisy_gating
        self.experts = nn.ModuleList(BottleneckAdapter(dim, bottleneck, scale, dropout, generator) for _ in range(num_experts))
        self.routers = nn.ParameterDict({str(t): nn.Parameter(torch.zeros(dim, num_experts)) for t in range(num_tasks)})
        self.noise = nn.ParameterDict({str(t): nn.Parameter(torch.zeros(dim, num_experts)) for t in range(num_tasks)})
        self.register_buffer("frozen", torch.zeros(num_experts, dtype=torch.bool))
        # expert picks of this fit: ``usage`` summed over ranks after every step (by the method),
        # ``step_usage`` this rank's picks of the current step. Not buffers: DDP would overwrite
        # every rank's buffers with rank 0's.
        self.usage = torch.zeros(num_experts, dtype=torch.float64)
        self.step_usage = torch.zeros(num_experts, dtype=torch.float64)
        # the last training forward's load-balancing loss, kept only when a loss term reads it
        self.track_balance = False
        self.balance_loss: Optional[torch.Tensor] = None
        # sharded parameters (set by the method): every trainable expert runs in every training
        # forward, on no rows where none picked it, so FSDP reduces the same gradients on every
        # rank; ``step_picked`` says which experts some row picked since the last optimizer step
        self.lockstep = False
        self.step_picked = torch.zeros(num_experts, dtype=torch.bool)

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def set_trainable(self, task: Optional[int]) -> None:
        """Task ``task`` trains its own router and every expert not frozen yet; nothing else
        (``None``: between tasks, no router)."""
        for key in self.routers:
            self.routers[key].requires_grad_(key == str(task))
            self.noise[key].requires_grad_(key == str(task) and self.noisy_gating)
        for e, expert in enumerate(self.experts):
            expert.requires_grad_(not bool(self.frozen[e]))

    def freeze_most_used(self, top: int) -> list[int]:
        """Freeze the ``top`` experts picked most in this fit (ties to the lower index; an expert
        never picked stays trainable); return them (some may have been frozen before)."""
        usage = self.usage.cpu()
        order = torch.sort(-usage, stable=True).indices[:top]
        picked = [int(e) for e in order if usage[e] > 0]
        self.frozen[picked] = True
        return picked

    def forward(self, x: torch.Tensor, out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``out`` plus the gated experts' outputs on ``x`` for every routed sample; the rows of
        samples routed to none are returned untouched."""
        batch, length, dim = x.shape
        per_token = self.router_input == "token"
        units = x.reshape(batch * length, 1, dim) if per_token else x
        unit_rows = rows.repeat_interleave(length) if per_token else rows
        gate_input = units[:, 0] if self.router_input != "mean" else units.mean(1)
        gates = units.new_zeros(units.shape[0], self.num_experts)
        balance = units.new_zeros(())
        noisy = self.noisy_gating and self.training
        tasks = torch.unique(unit_rows[unit_rows >= 0]).tolist()
        for task in tasks:
            idx = (unit_rows == task).nonzero().flatten() if len(tasks) > 1 or (unit_rows < 0).any() else None
            g, loss = top_k_gates(
                gate_input if idx is None else gate_input[idx], self.routers[str(task)], self.noise[str(task)], self.top_k, noisy
            )
            gates = g if idx is None else gates.index_copy_(0, idx, g)
            balance = balance + loss
        y = torch.zeros_like(units)  # filled in place: one buffer, not a copy per expert
        lockstep = self.lockstep and self.training
        for e, expert in enumerate(self.experts):
            idx = gates[:, e].nonzero().flatten()
            if idx.numel() or (lockstep and not bool(self.frozen[e])):
                y.index_add_(0, idx, gates[idx, e].view(-1, 1, 1) * expert(units[idx]))
            if lockstep and idx.numel():
                self.step_picked[e] = True
        if self.training:
            self.balance_loss = balance if self.track_balance else None
            self._count(gates, unit_rows, batch, length, per_token)
        y = y.view(batch, length, dim).to(out.dtype)
        if bool((rows >= 0).all()):
            return out + y
        return torch.where((rows >= 0).view(batch, 1, 1), out + y, out)

    @torch.no_grad()
    def _count(self, gates: torch.Tensor, unit_rows: torch.Tensor, batch: int, length: int, per_token: bool) -> None:
        """Add how often each expert was picked for the counted task's samples (real tokens only)."""
        if self.state.count_task is None:
            return
        keep = unit_rows == self.state.count_task
        if per_token and self.state.token_mask is not None and self.state.token_mask.shape == (batch, length):
            keep = keep & self.state.token_mask.reshape(-1).bool()
        if self.step_usage.device != gates.device:
            self.step_usage = self.step_usage.to(gates.device)
        self.step_usage += (gates[keep] > 0).sum(0).to(self.step_usage.dtype)

    def merge_usage(self, step_counts: torch.Tensor) -> None:
        """Add one step's counts (already summed over ranks) to ``usage``; start the next step."""
        self.usage = self.usage.to(step_counts.device) + step_counts
        self.step_usage = torch.zeros_like(self.step_usage)


def _hidden_input(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    for name in ("hidden_states", "x"):
        if name in kwargs:
            return kwargs[name]
    raise TypeError("MoEBlock could not find the block's input (first positional argument, hidden_states or x)")


class MoEBlock(nn.Module):
    """A transformer block plus its ``MoELayer``: ``block(x) + sum_i w_i E_i(x_tap)``.

    ``tap``: the name of the block's submodule whose input the experts and the router read
    (the norm before the MLP: the experts run parallel to the MLP on the residual stream after
    attention, as in the released code), or ``None`` for the block's own input.
    """

    def __init__(self, block: nn.Module, moe: MoELayer, tap: Optional[str]) -> None:
        super().__init__()
        self.block, self.moe, self.tap = block, moe, tap
        self._armed = False
        self._tapped: Optional[torch.Tensor] = None
        if tap is not None:
            block.get_submodule(tap).register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple) -> None:
        if self._armed:
            self._tapped = args[0]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        rows = self.moe.state.rows
        if rows is None or not bool((rows >= 0).any()):
            return self.block(*args, **kwargs)
        x = None if self.tap is not None else _hidden_input(args, kwargs)
        self._armed = True
        try:
            out = self.block(*args, **kwargs)
        finally:
            self._armed = False
        if self.tap is not None:
            x, self._tapped = self._tapped, None
        hidden = out[0] if isinstance(out, tuple) else out
        if rows.shape[0] != hidden.shape[0]:
            raise ValueError(f"routes for {rows.shape[0]} samples, but the block got a batch of {hidden.shape[0]}")
        hidden = self.moe(x, hidden, rows.to(hidden.device))
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden
