"""ContinualCallback: the base of every method that acts across tasks."""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Optional, Sequence

from lightning.pytorch.callbacks import Callback

from clight.choices import SETTINGS
from clight.contract import ConfigError, RunContext, require
from clight.data.task import SequenceInfo, Task
from clight.distributed_state import StateLayout
from clight.lightning_internals import callback_state_key


def _stable(value: Any) -> Any:
    """A representation of an init argument that is the same in every process (no addresses)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _stable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    return type(value).__qualname__


class ContinualCallback(Callback):
    """A Lightning callback that lives for the whole run, not one fit.

    The runner creates it once and passes it to every task's Trainer, so its attributes carry
    over from task to task. Besides Lightning's hooks it gets:

    - ``setup_sequence(module, datamodule, context)``: once, before the first task, with the
      ``RunContext`` (run folder, seed, world size, rank, whether the run is resumed);
    - ``on_task_start`` / ``on_task_end``: between fits, the place to add loss terms, snapshot
      weights or rebuild state (never inside a fit: DDP needs a fixed set of trainable parameters);
    - ``on_restored(module, tasks)``: when a run is opened for inference, after its state is loaded;
    - ``describe()``: its hyper-parameters and the variant that ran, as JSON-ready values.

    Where it applies is declared, and checked by the runner before anything runs: ``settings``
    (scenarios), ``module_protocol`` and ``data_protocol`` (``clight.contract`` protocols).
    State that must survive a resume goes in ``state_dict`` / ``load_state_dict`` as tensors and
    plain Python values (checkpoints are loaded with ``weights_only=True``); it is stored under
    ``state_key``, which is built from the class and its init arguments, so two instances of one
    method coexist. Anything that edits parameters must make the same edit on every rank.
    How its state lives across ranks is declared in ``state_layout``; a method that cannot run
    with sharded parameters says why in ``unshardable``.
    """

    settings: ClassVar[tuple[str, ...]] = SETTINGS
    module_protocol: ClassVar[Optional[type]] = None
    data_protocol: ClassVar[Optional[type]] = None
    #: the method learns without gradient steps (class statistics gathered in ``on_task_end``):
    #: a fit in which nothing is trainable is then skipped instead of refused as a misconfiguration
    gradient_free: ClassVar[bool] = False
    #: how each entry of ``state_dict`` lives across ranks: ``replicated``, ``reduced`` or
    #: ``sharded`` (like its parameter); see ``clight.distributed_state`` and docs/contract.md
    state_layout: ClassVar[dict[str, StateLayout]] = {}
    #: why the method cannot run with sharded parameters (``None``: it can); refused before the run
    unshardable: ClassVar[Optional[str]] = None
    _init_arguments: tuple[tuple, dict]  # set in __new__
    _state_key_suffix: str

    def __new__(cls, *args: Any, **kwargs: Any) -> "ContinualCallback":
        obj = super().__new__(cls)
        obj._init_arguments = (args, kwargs)
        obj._state_key_suffix = ""
        return obj

    # -- where it applies ---------------------------------------------------------------------
    def check_compatible(self, module: Any, datamodule: Any, info: SequenceInfo) -> None:
        """Raise ``ConfigError`` when this method cannot run with ``module`` and ``datamodule``.
        Subclasses extend it with checks of their own options (call ``super()`` first)."""
        name = type(self).__name__
        if info.setting not in self.settings:
            raise ConfigError(f"{name} applies to {list(self.settings)} sequences; this one is {info.setting!r}")
        require(name, module, self.module_protocol, "model")
        require(name, datamodule, self.data_protocol, "data module")

    def sharding_refusal(self, module: Any) -> Optional[str]:
        """Why this method cannot run on ``module`` with sharded parameters (default ``unshardable``)."""
        return self.unshardable

    # -- the sequence -------------------------------------------------------------------------
    def setup_sequence(self, module: Any, datamodule: Any, context: RunContext) -> None:
        """Once, before the first task (after the model saw the sequence)."""

    def on_task_start(self, module: Any, task: Task) -> None:
        """Before task ``task`` is trained (after the model's own ``on_task_start``)."""

    def on_task_end(self, module: Any, task: Task) -> None:
        """After task ``task`` is trained, before the accuracy row is evaluated."""

    def on_restored(self, module: Any, tasks: list[Task]) -> None:
        """After a run's state was loaded for inference (``clight.load_run``), with the finished
        ``tasks``: leave the model as the last ``on_task_end`` left it, in what the state dicts do
        not hold (which adapters are applied, say). Default: nothing to do."""

    def describe(self) -> dict:
        return {"class": type(self).__name__}

    # -- identity in checkpoints ----------------------------------------------------------------
    def init_arguments(self) -> dict:
        """The arguments this instance was created with, defaults filled in."""
        args, kwargs = getattr(self, "_init_arguments", ((), {}))
        try:
            bound = inspect.signature(type(self).__init__).bind(self, *args, **kwargs)
        except TypeError:
            return {"args": list(args), **kwargs}
        bound.apply_defaults()
        return {k: v for k, v in list(bound.arguments.items())[1:]}

    @property
    def state_key(self) -> str:
        # Lightning reads the key on every hook call (to name profiler sections): build it once.
        base = self.__dict__.get("_state_key_base")
        if base is None:
            base = self._state_key_base = callback_state_key(self, **_stable(self.init_arguments()))
        return base + getattr(self, "_state_key_suffix", "")

    def disambiguate(self, occurrence: int) -> None:
        """The runner numbers identical instances (same class and arguments) in config order."""
        self._state_key_suffix = f"#{occurrence}" if occurrence else ""


def assign_state_keys(methods: Sequence[ContinualCallback]) -> None:
    """Give identical instances distinct keys (``#1``, ``#2`` in order), deterministically."""
    seen: dict[str, int] = {}
    for method in methods:
        method.disambiguate(0)
        key = method.state_key
        method.disambiguate(seen.get(key, 0))
        seen[key] = seen.get(key, 0) + 1


__all__ = ["ConfigError", "ContinualCallback", "RunContext", "assign_state_keys"]
