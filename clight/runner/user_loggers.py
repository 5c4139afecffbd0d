"""The user's own Lightning loggers and callbacks (``trainer.logger``, ``trainer.callbacks``),
used beside clight's own: the run folder's CSV record stays, and the user's loggers see the same
global steps, continuing from task to task, and every task's accuracy row."""

from __future__ import annotations

from argparse import Namespace
from typing import Any, Optional, Union

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger

from clight.contract import ConfigError


class ContinuingSteps(Logger):
    """A user's logger whose steps continue across the run's fits (each fit has a fresh Trainer
    that counts from 0): ``steps.step_offset`` is added, as clight's CSV logger adds it. It is
    flushed at the end of every fit and closed once, at the end of the run (``close``)."""

    def __init__(self, inner: Logger, steps: Any) -> None:
        super().__init__()
        self.inner, self.steps = inner, steps

    @property
    def name(self) -> Optional[str]:
        return self.inner.name

    @property
    def version(self) -> Optional[Union[int, str]]:
        return self.inner.version

    @property
    def save_dir(self) -> Optional[str]:
        return self.inner.save_dir

    @property
    def log_dir(self) -> Optional[str]:
        return getattr(self.inner, "log_dir", None)

    @property
    def experiment(self) -> Any:
        return getattr(self.inner, "experiment", None)

    def log_metrics(self, metrics: dict[str, float], step: Optional[int] = None) -> None:
        self.inner.log_metrics(metrics, None if step is None else step + self.steps.step_offset)

    def log_hyperparams(self, params: Union[dict[str, Any], Namespace], *args: Any, **kwargs: Any) -> None:
        self.inner.log_hyperparams(params, *args, **kwargs)

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        self.inner.log_graph(model, input_array)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self.inner.after_save_checkpoint(checkpoint_callback)

    def save(self) -> None:
        self.inner.save()

    def finalize(self, status: str) -> None:
        self.inner.save()  # the end of one fit: the run goes on

    def close(self, status: str) -> None:
        self.inner.finalize(status)


def split_user_parts(trainer: dict) -> tuple[dict, list[Logger], list[Callback]]:
    """``trainer`` without ``logger`` and ``callbacks``, the loggers (``False``/``None``/``True``:
    none besides clight's) and the callbacks; a callback that keeps state across tasks belongs in
    ``methods``."""
    from clight.methods.base import ContinualCallback

    trainer = dict(trainer)
    logger, callbacks = trainer.pop("logger", None), trainer.pop("callbacks", None)
    loggers = (
        [] if isinstance(logger, bool) or logger is None else list(logger) if isinstance(logger, (list, tuple)) else [logger]
    )
    callbacks = [] if callbacks is None else list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
    for item, kind, cls in [*((x, "logger", Logger) for x in loggers), *((x, "callbacks", Callback) for x in callbacks)]:
        if not isinstance(item, cls):
            raise ConfigError(
                f"trainer.{kind} holds {type(item).__name__}, not a Lightning {cls.__name__}: give a Lightning {cls.__name__} class"
            )
    for callback in callbacks:
        if isinstance(callback, ContinualCallback):
            raise ConfigError(
                f"{type(callback).__name__} is a continual-learning method: list it under methods, not trainer.callbacks"
            )
    return trainer, loggers, callbacks
