"""Checkpoints inside a fit, so a run killed mid-task loses at most the epoch it was in (or, with
short epochs, at most ``min_seconds`` of training).

After a training epoch (after validation, early stopping and best-epoch bookkeeping)
``EpochCheckpoint`` writes ``checkpoints/task_F/epoch_E.ckpt``, unless the fit has trained for less
than ``min_seconds`` since it started or since its last checkpoint (rank 0's clock decides for
every rank). It writes it through Lightning's own
``Trainer.save_checkpoint``, whose ``RunFolderCheckpointIO`` writes it to a temporary name next to
it and renames it into place (atomic; Lightning's own would stage it in ``$TMPDIR``). A
checkpoint holds what changes during a fit and nothing else: the trainable parameters and the
buffers (frozen weights are rebuilt from the task-boundary checkpoint), the optimizer and
scheduler states, the loop progress (epoch, step: the samplers draw each epoch's order from
(seed, task, epoch)), and the state of every callback (the methods, early stopping, best-epoch
weights). The two newest are kept: a damaged newest one falls back to the one before it.
Everything loads with ``weights_only=True``.
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint

from clight.distributed import shards_parameters
from clight.io import UnreadableFileError, save_tensors_atomic
from clight.lightning_internals import start_next_epoch_afresh
from clight.runner.errors import RunFolderError
from clight.runner.sharded_checkpoints import commit_checkpoint, read_epoch_checkpoint, remove_checkpoint

EPOCH_FILE = re.compile(r"epoch_(\d+)\.ckpt")
KEPT = 2
_REQUIRED = ("state_dict", "loops", "optimizer_states", "callbacks")
_NOT_NEEDED = ("hyper_parameters", "hparams_name", "hparams_type", "datamodule_hyper_parameters", "datamodule_hparams_name")


def changing_state_keys(module: torch.nn.Module) -> set[str]:
    """The ``state_dict`` entries a fit can change: trainable parameters, buffers and extra state."""
    params = dict(module.named_parameters(remove_duplicate=False))
    return {k for k in module.state_dict() if k not in params or params[k].requires_grad}


def epoch_checkpoints(folder: Path) -> list[Path]:
    """The epoch checkpoints in ``folder``, newest first."""
    found = [(int(m.group(1)), p) for p in folder.glob("epoch_*.ckpt") if (m := EPOCH_FILE.fullmatch(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


@dataclass(frozen=True)
class ResumePoint:
    """An epoch checkpoint found readable, with the shapes of the model state it holds."""

    path: Path
    epoch: int
    shapes: dict[str, tuple[int, ...]]
    log_rows: Optional[int]  # rows of logs/metrics.csv when it was written

    def check_fits(self, module: torch.nn.Module) -> None:
        """Refuse a checkpoint written for another model (before Lightning loads it without ``strict``)."""
        state = module.state_dict()
        expected = {k: tuple(state[k].shape) for k in changing_state_keys(module)}
        if expected == self.shapes:
            return
        missing, extra = sorted(set(expected) - set(self.shapes)), sorted(set(self.shapes) - set(expected))
        shaped = sorted(k for k in set(expected) & set(self.shapes) if expected[k] != self.shapes[k])
        detail = "; ".join(
            f"{label}: {keys[:3]}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", extra), ("other shape", shaped))
            if keys
        )
        raise RunFolderError(
            f"{self.path} was written for another model ({detail}). The model changed since the run started: "
            "resume with the config the run was started with, or start a new run_dir."
        )


def find_resume_point(folder: Path) -> Optional[ResumePoint]:
    """The newest readable epoch checkpoint in ``folder``; damaged ones are skipped with a warning."""
    for path in epoch_checkpoints(folder):
        try:
            checkpoint = read_epoch_checkpoint(path)  # a file, or a sharded run's folder
            missing = [k for k in _REQUIRED if k not in checkpoint]
            if missing:
                raise UnreadableFileError(path, f"not a clight epoch checkpoint (no {missing})")
        except UnreadableFileError as exc:
            warnings.warn(f"{exc}; falling back to the checkpoint before it", stacklevel=2)
            continue
        name = EPOCH_FILE.fullmatch(path.name)
        assert name is not None  # epoch_checkpoints lists only these
        epoch = int(name.group(1))
        own = checkpoint["callbacks"].get(EpochCheckpoint.__qualname__, {})
        shapes = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
        return ResumePoint(path, epoch, shapes, own.get("log_rows"))
    return None


class EpochCheckpoint(Checkpoint):
    """Writes a checkpoint of the fit after every training epoch (see the module docstring).

    Its own state, kept in the checkpoint: the rows of ``logs/metrics.csv`` written so far (a
    resumed run cuts the log back to them), whether early stopping asked to stop, and the
    seconds the fit had run.
    """

    def __init__(self, folder: Path, min_seconds: float = 0.0) -> None:
        self.folder = Path(folder)
        self.min_seconds = min_seconds
        self.log_rows = 0
        self.should_stop = False
        self.seconds_before = 0.0
        self.restored = False
        self._started = self._saved = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self._started

    def on_fit_start(self, trainer, module) -> None:
        self._started = self._saved = time.perf_counter()

    def _due(self, trainer) -> bool:
        """Whether this epoch's checkpoint is written: the same answer on every rank (rank 0's)."""
        if self.min_seconds <= 0:
            return True
        return bool(trainer.strategy.broadcast(time.perf_counter() - self._saved >= self.min_seconds, src=0))

    def on_train_start(self, trainer, module) -> None:
        if not self.restored:
            return
        # The checkpoint is at an epoch boundary: nothing is left to finish mid-epoch. Lightning
        # treats every resume of a max_steps fit as one, and would end the saved epoch again
        # (its epoch-end hooks twice) and skip the first batch; start the next epoch afresh.
        # Afresh also for the data iterator: a resuming fit would keep the one made before the
        # epoch-start hooks, so EpochSeed's reseed would come before its draw of the loader's base
        # seed from the global generator instead of after it, as in a run never stopped: dropout
        # and all other global draws of the epoch (and any workers' seeds) would differ.
        start_next_epoch_afresh(trainer)
        if self.should_stop:  # early stopping had asked to stop when the checkpoint was written
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, module) -> None:
        if not self._due(trainer):
            return
        epoch = trainer.current_epoch
        self.should_stop = bool(trainer.should_stop)
        logger = trainer.logger
        if logger is not None and hasattr(logger, "flush"):
            self.log_rows = logger.flush()
        path = self.folder / f"epoch_{epoch}.ckpt"
        if shards_parameters(trainer.strategy):
            # a folder the strategy writes in place (DCP shards from every rank): staged, then renamed whole
            tmp = self.folder / f".epoch_{epoch}.ckpt.tmp"
            if trainer.is_global_zero:
                self.folder.mkdir(parents=True, exist_ok=True)
                remove_checkpoint(tmp)  # no stale shards of a killed write in it
            trainer.strategy.barrier()
            trainer.save_checkpoint(tmp, weights_only=False)  # every rank takes part; ends with a barrier
            if trainer.is_global_zero:
                commit_checkpoint(tmp, path)
        else:
            # every rank takes part; rank 0 writes (RunFolderCheckpointIO: atomic); ends with a barrier
            trainer.save_checkpoint(path, weights_only=False)
        if trainer.is_global_zero:
            for old in epoch_checkpoints(self.folder)[KEPT:]:
                remove_checkpoint(old)
        self._saved = time.perf_counter()

    def on_save_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        # written at the end of the epoch: record the epoch as completed (Lightning counts it
        # completed only after this hook), so a resume starts the next one
        for counts in checkpoint["loops"]["fit_loop"]["epoch_progress"].values():
            counts["completed"] = counts["processed"]
        keep = changing_state_keys(module)
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        for key in (*_NOT_NEEDED, type(trainer.datamodule).__qualname__ if trainer.datamodule is not None else ""):
            checkpoint.pop(key, None)

    def state_dict(self) -> dict:
        return {"log_rows": self.log_rows, "should_stop": self.should_stop, "seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        self.log_rows = int(state["log_rows"])
        self.should_stop = bool(state["should_stop"])
        self.seconds_before = float(state["seconds"])
        self.restored = True


class RunFolderCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing through ``clight.io``: to a temporary name next to the
    checkpoint (Lightning's would stage it in ``$TMPDIR`` and hold it in memory), flushed and renamed
    into place, with a full disk named."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        save_tensors_atomic(path, checkpoint)


def write_checkpoints_in_place(trainer) -> None:
    """Make ``trainer`` write its checkpoints with ``RunFolderCheckpointIO`` (unless a plugin set another writer)."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = RunFolderCheckpointIO()
