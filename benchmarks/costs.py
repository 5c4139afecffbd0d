"""Where a clight run's time goes, row by row (a helper of ``overhead.py``, not a benchmark itself).

``CostMeter`` wraps the functions that do one kind of work (building a Trainer, the sanity check,
a validation epoch, an epoch checkpoint, the task-boundary commit, a plot, ...) for the length of
a run and adds up, per row, their *exclusive* time: a call's time less that of the measured calls
inside it, so the rows of a run add up to the whole run (``SequenceRunner.run``). Every row has
CPU time (``time.process_time``) and wall time; a fsync waits without using the CPU, so the
writes show in the wall column only.

The rows of a task are those inside ``SequenceRunner._run_fit``; the rest is once per run. The
first evaluation (the untrained model's row, for forward transfer) is inside the first fit and is
its own per-run row, ``initial_row``. ``training_steps`` is Lightning's batch loop
(``advance`` and ``on_advance_end``: fetching the batch, the step, the per-step hooks and logging)
less the validation epoch it starts.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from functools import wraps
from typing import Any, Callable, Iterator

#: (row, module path, attribute path): what each row wraps
TARGETS: list[tuple[str, str, str]] = [
    ("training_steps", "lightning.pytorch.loops.training_epoch_loop", "_TrainingEpochLoop.advance"),
    ("training_steps", "lightning.pytorch.loops.training_epoch_loop", "_TrainingEpochLoop.on_advance_end"),
    ("trainer_construction", "clight.runner.loop", "make_trainer"),
    ("sanity_validation", "lightning.pytorch.trainer.trainer", "Trainer._run_sanity_check"),
    ("validation_epoch", "lightning.pytorch.loops.evaluation_loop", "_EvaluationLoop.run"),
    ("epoch_checkpoints", "clight.runner.checkpoints", "EpochCheckpoint.on_train_epoch_end"),
    ("boundary_checkpoint_and_manifest", "clight.runner.run_folder", "RunFolder.save_boundary"),
    ("manifest_writes", "clight.runner.run_folder", "RunFolder.save_progress"),
    ("log_writes", "clight.logger", "SequenceCSVLogger.log_metrics"),
    ("log_writes", "clight.logger", "SequenceCSVLogger.log_hyperparams"),
    ("log_writes", "clight.logger", "SequenceCSVLogger.save"),
    ("log_writes", "clight.logger", "SequenceCSVLogger.flush"),
    ("log_writes", "clight.logger", "SequenceCSVLogger.finalize"),
    ("plots", "clight.plots", "save_figure"),
    ("plots", "clight.plots", "plot_matrix"),
    ("plots", "clight.plots", "plot_task_curves"),
    ("plots", "clight.plots", "plot_new_task_accuracy"),
    ("plots", "clight.methods.plasticity.monitor", "plot_history"),
    ("model_summary", "lightning.pytorch.callbacks.model_summary", "ModelSummary.on_fit_start"),
    ("progress_display", "clight.progress", "SequenceProgress.start"),
    ("progress_display", "clight.progress", "SequenceProgress.end"),
    *[
        ("progress_bars", "lightning.pytorch.callbacks.progress.tqdm_progress", f"TQDMProgressBar.{hook}")
        for hook in (
            "on_sanity_check_start",
            "on_sanity_check_end",
            "on_train_start",
            "on_train_epoch_start",
            "on_train_epoch_end",
            "on_train_end",
            "on_validation_start",
            "on_validation_end",
        )
    ],
    ("dataloaders", "clight.data.datamodule", "TaskSequence.train_dataloader"),
    ("dataloaders", "clight.data.datamodule", "TaskSequence.val_dataloader"),
    ("dataloaders", "clight.data.datamodule", "TaskSequence.evaluation_loader"),
    ("dataloaders", "torch.utils.data.dataloader", "DataLoader.__iter__"),
    ("process_group", "clight.runner.loop", "start_processes"),
    ("process_group", "lightning.pytorch.strategies.strategy", "Strategy.setup_environment"),
    ("evaluation", "clight.runner.loop", "evaluate_tasks"),
    ("preflight_and_data", "clight.runner.loop", "check_run"),
    ("run_folder_setup", "clight.runner.loop", "open_run_folder"),
    ("run_folder_setup", "clight.runner.run_folder", "RunFolder.prepare"),
    ("final_report", "clight.runner.run_folder", "RunFolder.finish"),
    ("lightning_fit_other", "lightning.pytorch.trainer.trainer", "Trainer.fit"),
    ("clight_task_other", "clight.runner.loop", "SequenceRunner._run_fit"),
    ("clight_run_other", "clight.runner.loop", "SequenceRunner.run"),
]
#: the rows of the work itself, not of what is done around it
WORK = ("training_steps", "evaluation", "method_hooks")
#: rows that take the time of every measured call inside them (the sanity check's validation loop,
#: the final report's plots): the once-per-run rows and the sanity check
ABSORBING = ("sanity_validation", "initial_row", "preflight_and_data", "run_folder_setup", "process_group_run", "final_report")
#: rows outside the fits' loop (once per run)
PER_RUN = ("initial_row", "preflight_and_data", "run_folder_setup", "process_group_run", "final_report", "clight_run_other")


def _resolve(module: str, path: str) -> tuple[Any, str]:
    import importlib

    owner = importlib.import_module(module)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    return owner, name


class CostMeter:
    """Exclusive CPU and wall seconds per row (see the module docstring)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)
        self.inclusive: dict[str, dict[str, float]] = {"cpu": defaultdict(float), "wall": defaultdict(float)}
        self._stack: list[list[float]] = []  # per open call: [cpu inside measured children, wall inside them]
        self._in_fit = 0
        self._absorbing: list[str] = []  # open calls that take the time of everything inside them

    def wrap(self, row: str, fn: Callable) -> Callable:
        meter = self

        @wraps(fn)
        def measured(*args, **kwargs):
            if meter._absorbing:
                return fn(*args, **kwargs)
            name = meter._row(row, args, kwargs)
            meter._stack.append([0.0, 0.0])
            c0, w0 = time.process_time(), time.perf_counter()
            meter._in_fit += row == "clight_task_other"
            if name in ABSORBING:
                meter._absorbing.append(name)
            try:
                return fn(*args, **kwargs)
            finally:
                if name in ABSORBING:
                    meter._absorbing.pop()
                meter._in_fit -= row == "clight_task_other"
                cpu, wall = time.process_time() - c0, time.perf_counter() - w0
                inner_cpu, inner_wall = meter._stack.pop()
                meter.cpu[name] += cpu - inner_cpu
                meter.wall[name] += wall - inner_wall
                meter.inclusive["cpu"][name] += cpu
                meter.inclusive["wall"][name] += wall
                if meter._stack:
                    meter._stack[-1][0] += cpu
                    meter._stack[-1][1] += wall

        return measured

    def _row(self, row: str, args: tuple, kwargs: dict) -> str:
        if row == "evaluation" and len(args) < 3 and "strategy" not in kwargs:
            return "initial_row"  # the untrained model's row: the runner passes no strategy then
        if row == "process_group" and not self._in_fit:
            return "process_group_run"
        return row

    def wrap_methods(self, methods: list, model: Any, data: Any) -> None:
        """The methods' and the model's between-task hooks, and the data module's (the replay memory)."""
        for obj, hooks in [*((m, ("on_task_start", "on_task_end")) for m in methods), (model, ("on_task_start", "on_task_end"))]:
            for hook in hooks:
                setattr(obj, hook, self.wrap("method_hooks", getattr(obj, hook)))
        data.on_task_end = self.wrap("method_hooks", data.on_task_end)

    @contextmanager
    def patched(self) -> Iterator["CostMeter"]:
        """Every target of ``TARGETS`` wrapped while the block runs."""
        with ExitStack() as stack:
            for row, module, path in TARGETS:
                owner, name = _resolve(module, path)
                inherited = isinstance(owner, type) and name not in owner.__dict__
                original = getattr(owner, name) if inherited or not isinstance(owner, type) else owner.__dict__[name]
                setattr(owner, name, self.wrap(row, original))
                stack.callback(delattr, owner, name) if inherited else stack.callback(setattr, owner, name, original)
            yield self

    def per_task_ms(self, clock: str, num_tasks: int) -> dict[str, float]:
        seconds = self.cpu if clock == "cpu" else self.wall
        return {k: 1e3 * v / num_tasks for k, v in sorted(seconds.items()) if k not in PER_RUN}

    def per_run_s(self, clock: str) -> dict[str, float]:
        seconds = self.cpu if clock == "cpu" else self.wall
        return {k: seconds.get(k, 0.0) for k in PER_RUN}

    def spans(self, clock: str) -> dict[str, float]:
        """Seconds including the measured calls inside: the fits (``Trainer.fit``), the evaluations
        and the between-task hooks (rows that never nest in themselves)."""
        seconds = self.inclusive[clock]
        return {
            "train_s": seconds.get("lightning_fit_other", 0.0),
            "eval_s": seconds.get("evaluation", 0.0),
            "between_tasks_s": seconds.get("method_hooks", 0.0),
            "initial_row_s": seconds.get("initial_row", 0.0),
        }

    def totals(self, clock: str) -> dict[str, float]:
        """Seconds: the fits' loop less the work itself (the fixed cost), the work, the whole run."""
        seconds = self.cpu if clock == "cpu" else self.wall
        tasks = sum(v for k, v in seconds.items() if k not in PER_RUN)
        work = sum(seconds.get(k, 0.0) for k in WORK)
        return {"tasks_s": tasks, "work_s": work, "fixed_s": tasks - work, "run_s": sum(seconds.values())}
