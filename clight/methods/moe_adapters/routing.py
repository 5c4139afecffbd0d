"""Per-sample routing at the level of the whole network.

``NetworkRouting`` is attached to the routed network as ``moe_routing`` (so it moves, copies and
checkpoints with the model) and hooks the network's forward. Before every call it fills each
MoEAdapters instance's ``RouteState``:

- routes forced with ``forced(rows)`` (``None``: every adapter off, the pretrained network);
- inside a fit, the trained task for every sample (or each sample's own task for a batch that
  carries task ids, e.g. replayed samples);
- otherwise DDAS: one forward of the network with every adapter off gives the frozen features,
  each instance's selector turns them into per-sample routes, and the real forward follows;
- inside ``hold_routes()``, the routes the first forward got are kept for every later forward
  (a prompt, then its generated tokens or its candidate answers run from its key/value cache:
  a batch ``m`` times as large repeats each sample's route ``m`` times, as the cache was repeated).

A sample routed to none gets no adapter contribution at all, so its output is the pretrained
network's, bit for bit.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, cast

import torch
from torch import nn

from clight.methods.moe_adapters.ddas import DDAS
from clight.methods.moe_adapters.layer import RouteState
from clight.methods.moe_adapters.targets import Target

_NOT_HELD = object()  # module-level, so a deep copy of a network compares against the same object


class NetworkRouting(nn.Module):
    """The routing of one network: a DDAS selector and a ``RouteState`` per MoEAdapters instance."""

    def __init__(self, target: Target) -> None:
        super().__init__()
        self.target = target
        self.selectors = nn.ModuleDict()
        self.states: dict[str, RouteState] = {}
        # each instance's routes of the latest forward, kept after it (a follower network reads them)
        self.last_rows: dict[str, Optional[torch.Tensor]] = {}
        # a flag and the rows, not an identity sentinel: a deep copy of the network (LwF's frozen_copy,
        # GeRe's frozen_network) must keep working, and copy.deepcopy would make a new sentinel
        self._forcing = False
        self._forced: Optional[torch.Tensor] = None
        self._computing = False
        self._held: Optional[dict[str, Optional[torch.Tensor]]] = None

    def add(self, key: str, selector: DDAS, state: RouteState) -> None:
        self.selectors[key] = selector
        self.states[key] = state

    def selector(self, key: str) -> DDAS:
        return cast(DDAS, self.selectors[key])

    @contextmanager
    def forced(self, rows: Optional[torch.Tensor]) -> Iterator[None]:
        """Route every forward inside by ``rows`` (``[B]``, -1 = none; ``None``: every adapter off)."""
        previous = self._forcing, self._forced
        self._forcing, self._forced = True, rows
        try:
            yield
        finally:
            self._forcing, self._forced = previous

    @contextmanager
    def hold_routes(self) -> Iterator[None]:
        """The first forward inside decides the routes; every later one reuses them."""
        previous, self._held = self._held, {}
        try:
            yield
        finally:
            self._held = previous

    def _held_rows(self, key: str, batch: int) -> Any:
        rows = self._held[key] if self._held is not None and key in self._held else _NOT_HELD
        if rows is None or rows is _NOT_HELD:
            return rows
        if batch % len(rows):
            raise ValueError(f"held MoE routes are for {len(rows)} samples, a later forward got {batch}")
        return rows.repeat_interleave(batch // len(rows))

    @torch.no_grad()
    def frozen_features(self, network: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        """The frozen model's features ``[B, d]`` of one call's inputs (one forward, adapters off)."""
        self.clear()
        self._computing = True
        try:
            return self.target.frozen_features(network, args, kwargs)
        finally:
            self._computing = False

    def decide(self, network: nn.Module, args: tuple, kwargs: dict) -> None:
        batch = self.target.batch_size(args, kwargs)
        mask = self.target.token_mask(args, kwargs)
        features: Optional[torch.Tensor] = None
        for key, state in self.states.items():
            held = self._held_rows(key, batch)
            if held is not _NOT_HELD:
                rows = held
            elif self._forcing:
                rows = self._forced
            elif state.fit_task is not None:
                given = state.batch_rows is not None and len(state.batch_rows) == batch
                rows = state.batch_rows if given else torch.full((batch,), state.fit_task, dtype=torch.long)
            elif not self.selectors[key].any_fitted:  # nothing to route to yet: no frozen-feature forward
                rows = torch.full((batch,), -1, dtype=torch.long)
            else:
                if features is None:
                    features = self.frozen_features(network, args, kwargs)
                rows = self.selector(key).route(features)
            if rows is not None and rows.shape != (batch,):
                raise ValueError(f"MoE routes have shape {tuple(rows.shape)}, the network got {batch} samples")
            state.rows, state.token_mask = rows, mask
            self.last_rows[key] = rows
            if self._held is not None and key not in self._held:
                self._held[key] = rows

    def clear(self) -> None:
        for state in self.states.values():
            state.rows = state.token_mask = None

    def route(self, features: torch.Tensor, key: Optional[str] = None) -> torch.Tensor:
        """DDAS routes of ``features`` by instance ``key``'s selector (the first one by default)."""
        return self.selector(key if key is not None else next(iter(self.selectors))).route(features)


def _before_forward(network: nn.Module, args: tuple, kwargs: dict) -> None:
    routing = cast(NetworkRouting, network.moe_routing)
    if not routing._computing:
        routing.decide(network, args, kwargs)


def _after_forward(network: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    routing = cast(NetworkRouting, network.moe_routing)
    if not routing._computing:
        routing.clear()


def attach(network: nn.Module, kind: type, make: Callable[[], nn.Module], before: Callable, after: Callable) -> Any:
    """``network.moe_routing`` if it is a ``kind`` already; else ``make()``, attached there, with
    ``before`` and ``after`` hooked on the network's forward (one routing per network)."""
    existing = getattr(network, "moe_routing", None)
    if isinstance(existing, kind):
        return existing
    routing = make()
    network.moe_routing = routing
    network.register_forward_pre_hook(before, with_kwargs=True)
    network.register_forward_hook(after, with_kwargs=True)
    return routing


def install_routing(network: nn.Module, target: Target) -> NetworkRouting:
    """The network's routing, attached and hooked on first use."""
    return attach(network, NetworkRouting, lambda: NetworkRouting(target), _before_forward, _after_forward)


def network_routing(network: nn.Module) -> NetworkRouting:
    routing = getattr(network, "moe_routing", None)
    if not isinstance(routing, NetworkRouting):
        raise ValueError(f"{type(network).__name__} has no MoE adapters: set up MoEAdapters on the model first")
    return routing
