"""The runner: the task loop, the kind of run (schedule), one fit's Trainer, the run folder."""

from clight.runner.fit import RESERVED_TRAINER_KEYS, KeepBestWeights, RunnerSettings
from clight.runner.interrupt import RunInterrupted
from clight.runner.loop import RunResult, SequenceRunner
from clight.runner.run_folder import MANIFEST, Progress, RunFolder, RunFolderError
from clight.runner.schedule import Fit, Joint, NewTaskOnly, Schedule, Sequential, make_schedule

__all__ = [
    "MANIFEST", "RESERVED_TRAINER_KEYS", "Fit", "Joint", "KeepBestWeights", "NewTaskOnly", "Progress", "RunFolder",
    "RunFolderError", "RunInterrupted", "RunResult", "RunnerSettings", "Schedule", "SequenceRunner", "Sequential", "make_schedule",
]
