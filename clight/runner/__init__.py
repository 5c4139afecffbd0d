"""The runner: the task loop, the kind of run (schedule), one fit's Trainer, the run folder.

Names are imported on first use, so reading a run folder (``clight report``) does not import
Lightning."""

from clight._lazy import lazy_attributes

_LAZY = {
    **dict.fromkeys(["RESERVED_TRAINER_KEYS", "KeepBestWeights", "RunnerSettings"], "clight.runner.fit"),
    **dict.fromkeys(["RunResult", "SequenceRunner"], "clight.runner.loop"),
    "RunInterrupted": "clight.runner.interrupt",
    **dict.fromkeys(["MANIFEST", "Progress", "RunFolder"], "clight.runner.run_folder"),
    "RunFolderError": "clight.runner.errors",
    **dict.fromkeys(["Fit", "Joint", "NewTaskOnly", "Schedule", "Sequential", "make_schedule"], "clight.runner.schedule"),
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)

__all__ = list(_LAZY)
