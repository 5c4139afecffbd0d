"""Settings checked before a run touches its folder: a value that would make a run train
nothing, train for Lightning's silent default of 1000 epochs per task, or fail in the first
optimizer step is a ``ConfigError`` naming the field and the fix."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from clight.contract import ConfigError
from clight.runner.fit import RunnerSettings


def check_training_length(trainer: dict, settings: RunnerSettings) -> None:
    """Every task must train for a stated, positive length."""
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
    if settings.max_steps_per_task is None:
        if max_epochs is None and max_steps in (None, -1):
            raise ConfigError(
                "trainer.max_epochs is not set, so Lightning would train 1000 epochs per task (a config cut short loses "
                "its trainer section this way). Set trainer.max_epochs (or trainer.max_steps, or runner.max_steps_per_task)."
            )
        if max_epochs is not None and (max_epochs == 0 or max_epochs < -1):
            raise ConfigError(f"trainer.max_epochs={max_epochs}: every task would end untrained. Set it to 1 or more.")
        if max_epochs == -1 and max_steps in (None, -1):
            raise ConfigError("trainer.max_epochs=-1 with no trainer.max_steps never ends. Set one of them to a positive value.")
    if max_steps is not None and (max_steps == 0 or max_steps < -1):
        raise ConfigError(
            f"trainer.max_steps={max_steps}: every task would end untrained. Set it to 1 or more (or -1: no limit)."
        )
    if trainer.get("limit_train_batches") == 0:
        raise ConfigError("trainer.limit_train_batches=0: every task would end untrained. Remove it or set a positive value.")


def check_finite(values: Any, prefix: str = "") -> None:
    """No NaN anywhere in a config (a NaN is never a valid setting, and fails late and far away)."""
    if isinstance(values, dict):
        for key, value in values.items():
            check_finite(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(values, (list, tuple)):
        for i, value in enumerate(values):
            check_finite(value, f"{prefix}[{i}]")
    elif isinstance(values, float) and math.isnan(values):
        raise ConfigError(f"{prefix} is NaN. Set it to a number.")


def check_optimizer(model: torch.nn.Module) -> None:
    """Build the model's optimizer (and scheduler) on a stand-in parameter, as the first fit will."""
    make_optimizer = getattr(model, "optimizer_factory", None)
    if make_optimizer is None:
        return
    field = "model.init_args.optimizer"
    try:
        optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(1))])
    except Exception as exc:
        raise ConfigError(f"{field} is refused by the optimizer: {exc}. Fix its init_args (e.g. a learning rate >= 0).") from exc
    for group in optimizer.param_groups:
        for key, value in group.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{field}.init_args.{key} is {value}. Set it to a finite number.")
        if isinstance(group.get("lr"), (int, float)) and group["lr"] < 0:
            raise ConfigError(f"{field}.init_args.lr is {group['lr']}. A learning rate must be >= 0.")
    make_scheduler = getattr(model, "lr_scheduler_factory", None)
    if make_scheduler is not None:
        try:
            make_scheduler(optimizer)
        except Exception as exc:
            raise ConfigError(f"model.init_args.lr_scheduler is refused by the scheduler: {exc}. Fix its init_args.") from exc


def check_run(model: Any, data: Any, methods: Sequence[Any], trainer: dict, settings: RunnerSettings) -> Any:
    """Everything that can be checked before the run folder is touched; returns the sequence's ``SequenceInfo``."""
    from clight.methods.base import assign_state_keys
    from clight.runner.sharding import check_sharding

    info = data.info  # loads the data: a missing or malformed data set fails before the run folder exists
    model.check_compatible(info)
    for method in methods:
        method.check_compatible(model, data, info)
    assign_state_keys(methods)
    check_finite(trainer, "trainer")
    check_training_length(trainer, settings)
    check_optimizer(model)
    check_sharding(trainer, model, methods)
    return info
