"""The lifecycle every LoRA-family method shares, as a base callback.

``setup_sequence`` creates the adapters (all of them, before the first task); ``on_task_start``
applies tasks 0..t and makes task t's matrices the only trainable ones; ``on_task_end`` writes
task t's adapter as a peft folder ``run_dir/adapters/task_<t>/`` (rank 0). The state is the
number of finished tasks: the adapters themselves are the model's parameters, so they are in
every checkpoint already.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Optional

from clight.contract import ConfigError, RunContext
from clight.data.task import SequenceInfo, Task
from clight.methods.base import ContinualCallback
from clight.methods.lora_family.adapters import LORA_PARTS, TaskAdapters
from clight.methods.lora_family.targets import claim, lora_network

SALT = 0x4C6F5241  # "LoRA": the run-seed salt of the adapters' initial weights


def adapter_folder(context: RunContext, task: int) -> Optional[Path]:
    """Where task ``task``'s adapter is written (``None`` outside a run)."""
    return context.path("adapters", f"task_{task}")


def check_one_fit_per_task(owner: str, finished: int, task: Task) -> None:
    """Per-task parameters need the tasks one after another, one fit each."""
    if task.index != finished:
        raise ConfigError(
            f"{owner} gives task {task.index} its own parameters, but task {finished} has not ended: it needs one fit "
            "per task, in order (not runner.baseline: joint)"
        )


class TaskLoRAMethod(ContinualCallback):
    """Base of SeqLoRA, IncLoRA, OLoRA and InfLoRA: the model's LoRA config, one adapter per task
    (``per_task``) or one for all, the matrices of the current task's adapter that train
    (``trained_parts``), earlier adapters frozen and still applied.

    ``save_adapters``: write each task's adapter as a peft folder in the run folder.
    ``fuse_earlier``: while a task trains, apply the earlier adapters as one fused branch (two
    LoRA branches per layer at every task; see ``adapters.py``), else peft's one branch per adapter.
    """

    state_layout = {"finished": "replicated"}
    unshardable = "not yet tested with sharded parameters (docs/scaling.md lists the methods that are)"

    per_task: ClassVar[bool] = True
    trained_parts: ClassVar[tuple[str, ...]] = LORA_PARTS

    def __init__(self, save_adapters: bool = True, fuse_earlier: bool = True) -> None:
        self.save_adapters, self.fuse_earlier = save_adapters, fuse_earlier
        self.adapters: Optional[TaskAdapters] = None
        self.finished = 0
        self.lora: Optional[dict] = None
        self.context = RunContext()

    @property
    def name(self) -> str:
        return type(self).__name__

    # -- where it applies -------------------------------------------------------------------------
    def check_compatible(self, module: Any, datamodule: Any, info: SequenceInfo) -> None:
        super().check_compatible(module, datamodule, info)
        lora_network(module, self.name)
        claim(module, self, self.name)

    # -- the sequence -----------------------------------------------------------------------------
    def setup_sequence(self, module: Any, datamodule: Any, context: RunContext) -> None:
        self.context = context
        self.lora = dict(module.lora_config)
        network = lora_network(module, self.name)
        num_tasks = datamodule.num_tasks if self.per_task else None
        self.adapters = TaskAdapters(network, num_tasks, context.seed_for(SALT))

    def on_task_start(self, module: Any, task: Task) -> None:
        check_one_fit_per_task(self.name, self.finished, task)
        assert self.adapters is not None, "setup_sequence comes first"
        self.adapters.activate(task.index, self.trained_parts, self.fuse_earlier)

    def on_task_end(self, module: Any, task: Task) -> None:
        self.finished = task.index + 1
        assert self.adapters is not None, "setup_sequence comes first"
        self.adapters.activate(task.index, trainable=())
        folder = adapter_folder(self.context, task.index)
        if self.save_adapters and folder is not None and self.context.is_rank_zero:
            self.adapters.save(task.index, folder)

    def on_restored(self, module: Any, tasks: list[Task]) -> None:
        if tasks:  # the adapters on_task_end left applied (the checkpoint holds their weights, not which are applied)
            assert self.adapters is not None, "setup_sequence comes first"
            self.adapters.activate(max(t.index for t in tasks), trainable=())

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"finished": self.finished}

    def load_state_dict(self, state: dict) -> None:
        self.finished = int(state["finished"])  # the adapters applied are set by the next on_task_start

    def describe(self) -> dict:
        out = {
            "class": self.name,
            "lora": self.lora,
            "adapters": "one per task, earlier ones frozen and applied" if self.per_task else "one for every task",
            "trained": list(self.trained_parts),
            "adapter_folders": (
                [f"adapters/task_{t}" for t in range(self.finished)] if self.save_adapters else "not saved (save_adapters: false)"
            ),
        }
        if self.per_task:
            out["earlier_adapters_in_training"] = (
                "one fused frozen branch, one dropout mask" if self.fuse_earlier else "peft: one branch and dropout mask each"
            )
        return out
