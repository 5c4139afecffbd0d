"""clight's arms of ``overhead.py``, run in-process as a user runs them, with every row of
``costs.CostMeter`` measured (a helper module, not a benchmark itself).

- ``split_run``: the split Fashion-MNIST protocol of ``handwritten_cl.py`` through
  ``SequenceRunner`` with its defaults (epoch checkpoints after 10 s of training, the tqdm bar, the CSV logger;
  validation off, as the hand-written loop has none);
- ``plasticity_run``: ``configs/plasticity_backprop.yaml`` itself (parsed as ``clight fit`` parses
  it), with ``--tasks`` tasks, the protocol of ``handwritten_plasticity.py``.

The sequence's tasks are built before the clock starts (the hand-written arms load and draw
theirs outside it too).
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

import handwritten_cl as hand
import torch
from costs import CostMeter

REPO = Path(__file__).resolve().parents[1]
PLASTICITY_CONFIG = REPO / "configs" / "plasticity_backprop.yaml"


def _step_clock():
    from clight.methods import ContinualCallback

    class StepClock(ContinualCallback):
        """When every training step starts (the median gap is the step time)."""

        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            self.starts.append(hand.clock())

    return StepClock()


def _measured_run(runner, clock: str) -> dict:
    """``runner.run()`` with every row measured; the rows, totals and the result."""
    meter = CostMeter()
    assert runner.data.tasks  # built before the clock starts
    meter.wrap_methods([m for m in runner.methods if type(m).__name__ != "StepClock"], runner.model, runner.data)
    with meter.patched():
        result = runner.run()
    tasks = runner.data.num_tasks
    return {
        "result": result,
        "per_task_ms": meter.per_task_ms(clock, tasks),
        "per_run_s": meter.per_run_s(clock),
        **meter.totals(clock),
        **meter.spans(clock),
        "wall": meter.totals("wall"),
        "per_task_wall_ms": meter.per_task_ms("wall", tasks),
    }


def split_run(method: str, hidden: list[int], batch_size: int, steps_per_task=None, clock: str = "cpu") -> dict:
    """One clight run of the split protocol; the timings of ``handwritten_cl.run`` and the rows."""
    from clight import MLP, ContinualClassifier, Replay, SequenceRunner, SplitClasses, TaskSequence
    from clight.methods.regularization import EWC, LwF

    torch.manual_seed(0)
    model = ContinualClassifier(MLP(hidden), optimizer=partial(torch.optim.SGD, lr=0.01, momentum=0.9))
    replay = Replay("class_balanced", capacity=1000, batch_size=batch_size) if method == "replay" else None
    data = TaskSequence(SplitClasses("fashion_mnist", 5), batch_size=batch_size, seed=0, replay=replay)
    methods = {"ewc": [EWC()], "lwf": [LwF()]}.get(method, [])
    step_clock = _step_clock()
    with tempfile.TemporaryDirectory() as tmp:
        runner = SequenceRunner(
            model,
            data,
            methods=[step_clock, *methods],
            run_dir=f"{tmp}/run",
            max_steps_per_task=steps_per_task,
            trainer=dict(accelerator="cpu", devices=1, max_epochs=1, limit_val_batches=0),
        )
        out = _measured_run(runner, clock)
    return {"rows": out.pop("result").accuracy_matrix.tolist(), "starts": step_clock.starts, **out}


def plasticity_run(num_tasks: int, run_dir: str, clock: str = "cpu", epochs: int = 3) -> dict:
    """``configs/plasticity_backprop.yaml`` with ``num_tasks`` tasks (and ``epochs`` per task)."""
    from clight.cli import runner_from_config

    runner = runner_from_config(
        str(PLASTICITY_CONFIG),
        f"--data.scenario.init_args.num_tasks={num_tasks}",
        f"--trainer.max_epochs={epochs}",
        f"--run_dir={run_dir}",
    )
    out = _measured_run(runner, clock)
    result = out.pop("result")
    return {"new_task_accuracy": [row[i] for i, row in enumerate(result.accuracy_matrix.tolist())], **out}


def fisher_passes(path: str, threads: int = 1, clock: str = "cpu", tasks: int = 5, samples: int = 200) -> dict:
    """EWC's Fisher pass after each of ``tasks`` tasks of the split protocol (untrained MLP
    784-256-256-10), computed by ``path`` (``auto``: EWC's choice); seconds of each pass."""
    import time

    from clight import MLP, ContinualClassifier, SplitClasses, TaskSequence
    from clight.methods.regularization.fisher import diagonal_fisher

    torch.set_num_threads(threads)
    tick = time.process_time if clock == "cpu" else time.perf_counter
    data = TaskSequence(SplitClasses("fashion_mnist", tasks), batch_size=64, seed=0)
    model = ContinualClassifier(MLP([256, 256]))
    model.setup_sequence(data.info)
    passes, used = [], None
    for task in data.tasks:
        model.on_task_start(task)
        began = tick()
        _, used = diagonal_fisher(model, task.train, samples, path=path)
        passes.append(tick() - began)
    return {"passes": passes, "path": used}
