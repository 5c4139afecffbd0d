"""A network whose routes follow another network's, sample by sample: CLIP's text tower.

An image is scored against the class prompts, so the prompts must be encoded under that image's
routes. ``FollowerRouting`` is attached to the text tower as ``moe_routing`` and hooks its
forward. Inside a fit every prompt goes through the trained task's router. Otherwise it reads the
routes the leader (the vision tower's routing) gave the images of the latest forward: when they
all agree, the prompts are encoded once under that route; when they differ, once per distinct
route, and the tower's pooled output becomes ``[images, prompts, width]``, each image's prompts
encoded under its own route (``ContinualCLIP.similarity`` takes such per-image class embeddings).
"""

from __future__ import annotations

from typing import Any, Optional, cast

import torch
from torch import nn

from clight.methods.moe_adapters.layer import RouteState
from clight.methods.moe_adapters.routing import NetworkRouting, attach


class FollowerRouting(nn.Module):
    """The routing of a follower network: a ``RouteState`` per MoEAdapters instance."""

    _leader: NetworkRouting

    def __init__(self, leader: NetworkRouting) -> None:
        super().__init__()
        object.__setattr__(self, "_leader", leader)  # not a submodule: it belongs to the leader network
        self.states: dict[str, RouteState] = {}
        self._plan: Optional[tuple[list[str], torch.Tensor, torch.Tensor]] = None
        self._computing = False

    def add(self, key: str, state: RouteState) -> None:
        self.states[key] = state

    def clear(self) -> None:
        for state in self.states.values():
            state.rows = state.token_mask = None

    def _set(self, keys: list[str], combo: torch.Tensor, batch: int) -> None:
        for k, key in enumerate(keys):
            self.states[key].rows = torch.full((batch,), int(combo[k]), dtype=torch.long)

    def decide(self, batch: int) -> None:
        self._plan = None
        following: list[str] = []
        for key, state in self.states.items():
            if state.fit_task is not None:
                state.rows = torch.full((batch,), state.fit_task, dtype=torch.long)
            else:
                following.append(key)
        if not following:
            return
        leader_rows = [self._leader.last_rows.get(key) for key in following]
        images = next((len(r) for r in leader_rows if r is not None), 1)
        routes = torch.stack([r.cpu() if r is not None else torch.full((images,), -1, dtype=torch.long) for r in leader_rows], 1)
        combos, index = torch.unique(routes, dim=0, return_inverse=True)
        self._set(following, combos[0], batch)
        if len(combos) > 1:
            self._plan = (following, combos, index)

    def expand(self, network: nn.Module, args: tuple, kwargs: dict, output: Any, batch: int) -> Any:
        """Encode the prompts once more for every other distinct route; stack per image."""
        assert self._plan is not None, "expand follows a decide that planned more than one route"
        following, combos, index = self._plan
        self._plan = None
        pooled = [output.pooler_output]
        self._computing = True
        try:
            for combo in combos[1:]:
                self._set(following, combo, batch)
                pooled.append(network(*args, **kwargs).pooler_output)
        finally:
            self._computing = False
        output.pooler_output = torch.stack(pooled)[index.to(pooled[0].device)]
        return output


def _batch_size(args: tuple, kwargs: dict) -> int:
    ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
    return int(ids.shape[0])


def _before_forward(network: nn.Module, args: tuple, kwargs: dict) -> None:
    routing = cast(FollowerRouting, network.moe_routing)
    if not routing._computing:
        routing.decide(_batch_size(args, kwargs))


def _after_forward(network: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    routing = cast(FollowerRouting, network.moe_routing)
    if routing._computing:
        return None
    try:
        if routing._plan is not None:
            return routing.expand(network, args, kwargs, output, _batch_size(args, kwargs))
        return None
    finally:
        routing.clear()


def install_follower(network: nn.Module, leader: NetworkRouting) -> FollowerRouting:
    """The follower routing of ``network``, attached and hooked on first use."""
    return attach(network, FollowerRouting, lambda: FollowerRouting(leader), _before_forward, _after_forward)
