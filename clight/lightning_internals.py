"""Every use of Lightning's private API, in one place.

Lightning gives no public way to do these few things, so clight reads or sets names Lightning
may rename in any release. The Lightning versions clight is tested with are stated in
``pyproject.toml``; ``tests/test_lightning_internals.py`` fails, naming the attribute, when the
installed Lightning no longer has one of ``PRIVATE_ATTRIBUTES``, and checks that each function
here still does what its caller relies on. No other clight module touches a private Lightning
name (the same test reads the sources to keep it so).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import lightning as L
    from lightning.pytorch.strategies import DDPStrategy

#: (the Lightning class, the private attribute clight uses on its instances)
PRIVATE_ATTRIBUTES = (
    ("Trainer", "_logger_connector"),
    ("_LoggerConnector", "should_update_logs"),  # a public name on a private object
    ("_FitLoop", "_restarting"),
    ("_FitLoop", "_resuming_from_checkpoint"),
    ("LightningModule", "_trainer"),
    ("LightningModule", "_current_fx_name"),
    ("Callback", "_generate_state_key"),
    ("DDPStrategy", "_ddp_kwargs"),
)

#: set by Lightning on the module around each of the dozens of hook calls of a training step
CURRENT_HOOK_ATTRIBUTE = "_current_fx_name"


def attached_trainer(module: L.LightningModule) -> Optional[L.Trainer]:
    """The Trainer ``module`` is attached to, or None (``module.trainer`` raises when there is none)."""
    return module._trainer


def logger_writes_this_step(trainer: L.Trainer) -> bool:
    """Whether the logger writes the metrics of the training step about to run (every
    ``log_every_n_steps``-th step)."""
    return trainer._logger_connector.should_update_logs


def start_next_epoch_afresh(trainer: L.Trainer) -> None:
    """After restoring a checkpoint written at the end of an epoch, in ``on_train_start``: make
    the fit start the next epoch as a fit never stopped would (neither finishing the saved epoch
    again nor keeping the data iterator made before the epoch-start hooks)."""
    fit_loop = trainer.fit_loop
    fit_loop.epoch_loop.restarting = False  # reaches the validation loop too
    # Not fit_loop.restarting: for a max_steps fit its setter makes any value True.
    fit_loop._restarting = False
    fit_loop._resuming_from_checkpoint = False


#: the callback hooks Lightning calls around every batch
BATCH_HOOKS = (
    "on_train_batch_start",
    "on_train_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
)


def skip_unused_batch_hooks(callback: L.Callback) -> None:
    """Lightning calls every hook of every callback, overridden or not, through a profiler
    section named by the callback's ``state_key`` (about 9 us a call, six calls a training step
    per callback). Its dispatcher calls a hook only when the attribute is callable: each batch
    hook ``callback``'s class leaves as ``Callback``'s no-op is set to None on the instance."""
    from lightning.pytorch.callbacks import Callback

    for name in BATCH_HOOKS:
        if getattr(type(callback), name, None) is getattr(Callback, name):
            setattr(callback, name, None)


def callback_state_key(callback: L.Callback, **kwargs: Any) -> str:
    """Lightning's own form of a callback's ``state_key``: the class name and ``repr(kwargs)``."""
    return callback._generate_state_key(**kwargs)


def finds_unused_parameters(strategy: DDPStrategy) -> bool:
    """Whether a DDP strategy was made with ``find_unused_parameters=True``."""
    return bool(strategy._ddp_kwargs.get("find_unused_parameters"))
