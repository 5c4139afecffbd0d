"""The model as the last task left it, for methods that distil from it (LwF, iCaRL)."""

from __future__ import annotations

from typing import Any, Optional

import torch


class PreviousModel:
    """A ``frozen_copy`` of the module taken at a task's end: held outside the module (never
    trained, never part of DDP's parameters), moved to the module's device once, and saved in
    checkpoints. A resumed run gets its weights before a copy of the right shape exists; they are
    loaded into a fresh copy at the next task's start."""

    def __init__(self) -> None:
        self.model: Optional[Any] = None
        self._device: Optional[torch.device] = None
        self._pending: Optional[dict] = None

    def take(self, module: Any) -> None:
        self.model, self._device, self._pending = module.frozen_copy(), None, None

    def on_task_start(self, module: Any) -> None:
        if self._pending is not None:
            pending = self._pending
            self.take(module)
            self.model.load_state_dict(pending, strict=False)

    def on(self, device: torch.device) -> Any:
        """The copy, on ``device`` (moved once, not walked on every step)."""
        if self._device != device:
            self.model.to(device)
            self._device = device
        return self.model

    def state_dict(self) -> dict:
        return {"previous": self.model.state_dict()} if self.model is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.model is not None and "previous" in state:
            self.model.load_state_dict(state["previous"], strict=False)
        else:
            self._pending = state.get("previous")
