"""Stopping a run whose training loss is NaN or infinite, without stalling an accelerator."""

from __future__ import annotations

import math
from typing import Optional

import torch

#: losses kept on an accelerator before they are checked whatever the logging cadence
MAX_PENDING = 100


class NonFiniteLossError(FloatingPointError):
    pass


def non_finite_error(value: float, task: int, step: int) -> NonFiniteLossError:
    return NonFiniteLossError(
        f"the training loss became {value} at task {task}, step {step}. "
        "Lower the learning rate (model.optimizer.init_args.lr), check the inputs for NaN, "
        "or enable gradient clipping (trainer.gradient_clip_val). The run folder keeps the last finished task."
    )


class FiniteLossCheck:
    """Raises ``NonFiniteLossError`` naming the first step whose loss was not finite.

    A CPU loss is checked at once (reading a CPU scalar costs nothing), so the optimizer never
    steps on it. Reading an accelerator's loss back would wait for the device on every step, so
    those losses stay on the device and are checked together when ``observe`` is told the step
    is due (the steps whose loss is logged), and by ``check`` at the end of every epoch, before
    every checkpoint and when the fit ends: the run stops a few steps late, never saving weights
    that a non-finite loss has reached.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[int, int, torch.Tensor]] = []

    def observe(self, loss: torch.Tensor, task: int, step: int, due: bool, every_step: Optional[bool] = None) -> None:
        if every_step if every_step is not None else loss.device.type == "cpu":
            value = loss.item()  # item(), unlike float(), does not warn about a tensor that requires grad
            if not math.isfinite(value):
                self.pending.clear()
                raise non_finite_error(value, task, step)
            return
        self.pending.append((task, step, loss.detach()))
        if due or len(self.pending) >= MAX_PENDING:
            self.check()

    def check(self) -> None:
        """Check every loss not checked yet (one read from the device)."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        finite = torch.isfinite(torch.stack([loss.float() for _, _, loss in pending]))
        if bool(finite.all()):
            return
        task, step, loss = pending[int((~finite).nonzero()[0])]
        raise non_finite_error(float(loss), task, step)
