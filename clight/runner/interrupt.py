"""SIGTERM and SIGINT (Ctrl-C) during a run: stop at the next training batch, on every rank.

While a run is going, clight's handler only notes the signal; ``StopOnSignal`` checks the note
before every training batch (all ranks agree through one all-reduce, so they stop at the same
batch) and raises ``RunInterrupted``. The runner then marks the manifest ``interrupted`` and the
command exits with 128 + the signal number. A second Ctrl-C stops at once. Lightning's own
SIGTERM handler (which ends the process with status 0) is replaced when training starts in
every fit; a ``SIGTERMException`` it raises before then (e.g. in the sanity check) is turned
into ``RunInterrupted`` by the runner.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any, Callable, Optional, Union

import torch
from lightning.pytorch.callbacks import Callback

from clight.distributed import is_rank_zero

SIGNALS = (signal.SIGINT, signal.SIGTERM)
Handler = Union[Callable[[int, Optional[FrameType]], Any], int, signal.Handlers, None]  # as signal.getsignal returns


class RunInterrupted(Exception):
    """The run was stopped by a signal; the run folder can be resumed."""

    def __init__(self, signum: int, message: str = "") -> None:
        self.signum = signum
        super().__init__(message or f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """The signal received during a run, if any (installed for the run by the runner)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict[int, Handler] = {}

    def install(self) -> None:
        """Take SIGINT and SIGTERM (main thread only: Python delivers signals there)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in SIGNALS:
            self._previous.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self._note)

    def take_back(self) -> None:
        """Install the handlers again over whatever replaced them since ``install``."""
        for signum in self._previous:
            signal.signal(signum, self._note)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _note(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signum = signum
        if is_rank_zero():
            print(
                f"\nclight: {signal.Signals(signum).name} received; stopping after this batch (Ctrl-C again to stop at once).",
                file=sys.stderr,
                flush=True,
            )

    def agreed(self) -> Optional[int]:
        """The signal any rank received (the largest number, on every rank alike)."""
        if (
            not (torch.distributed.is_available() and torch.distributed.is_initialized())
            or torch.distributed.get_world_size() == 1
        ):
            return self.signum
        flag = torch.tensor([self.signum or 0], dtype=torch.int64)
        if torch.distributed.get_backend() == "nccl":
            flag = flag.cuda()
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item()) or None

    def check(self) -> None:
        signum = self.agreed()
        if signum:
            raise RunInterrupted(signum)


class StopOnSignal(Callback):
    """Raises ``RunInterrupted`` before the next training batch once a signal has been noted."""

    def __init__(self, request: StopRequest) -> None:
        self.request = request

    def on_train_start(self, trainer, module) -> None:
        self.request.take_back()  # Lightning installed its SIGTERM handler for this fit

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.request.check()
