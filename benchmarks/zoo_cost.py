"""Step time of DER++, A-GEM, SI, MAS, iCaRL and GDumb against fine-tuning, same model and batch.

Every arm is the MLP 784-400-400 of the Fashion-MNIST table (batch 64, Adam 1e-3) with identical
initial weights, on its own copy of the split Fashion-MNIST sequence. Each arm first trains task 1
for ``--warmup`` steps with its method in place and crosses the task boundary as a run does
(memories filled, importances computed, exemplars chosen), so the timed steps of task 2 carry
every term the method adds (the boundary itself is timed once per arm too). A step is what Lightning runs for a batch: the module's
``training_step`` (task loss and the methods' loss terms), backward, the methods'
``on_before_optimizer_step``, the optimizer step, the methods' ``on_train_batch_end``; the batch
comes from the arm's own training stream (the current task for all but iCaRL, whose stream adds
its exemplars, and GDumb, whose stream is its memory). The arms take turns, ``--steps`` steps at
a time, for ``--rounds`` rounds, so load from other processes hits all of them alike. Times are
CPU seconds of this process (one thread) by default. Ratios first, then medians.

    OMP_NUM_THREADS=1 python benchmarks/zoo_cost.py                       # the headline
    OMP_NUM_THREADS=1 python benchmarks/zoo_cost.py --smoke --out /tmp/z  # seconds, digits, tiny MLP
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from clight import AGEM, MAS, MLP, SI, ContinualClassifier, DERpp, GDumb, ICaRL, RunContext, SplitClasses, TaskSequence  # noqa: E402

TARGETS = {"DER++": 2.0, "A-GEM": 2.5, "SI": 1.3, "MAS": 1.3}


def arms(smoke: bool) -> dict[str, Callable[[], list]]:
    memory = 100 if smoke else 1000
    batch = 16 if smoke else 64
    return {
        "fine-tuning": lambda: [],
        "DER++": lambda: [DERpp(capacity=memory, alpha=1.0, beta=0.5, batch_size=batch)],
        "DER++ (one memory batch)": lambda: [DERpp(capacity=memory, alpha=1.0, beta=0.5, batch_size=batch, replay_batches="one")],
        "A-GEM": lambda: [AGEM(samples_per_task=memory // 5, reference_batch_size=256 if not smoke else 32)],
        "A-GEM (reference batch 64)": lambda: [AGEM(samples_per_task=memory // 5, reference_batch_size=batch)],
        "SI": lambda: [SI()],
        "MAS": lambda: [MAS(samples=64 if smoke else None)],
        "iCaRL": lambda: [ICaRL(memory_size=memory)],
        "GDumb": lambda: [GDumb(capacity=memory)],
    }


class Arm:
    """One model, its data and its methods, stepped as Lightning steps them."""

    def __init__(self, methods: list, smoke: bool) -> None:
        torch.manual_seed(0)
        source = "digits" if smoke else "fashion_mnist"
        self.data = TaskSequence(SplitClasses(source, num_tasks=5), batch_size=16 if smoke else 64, seed=0)
        self.model = ContinualClassifier(MLP([32, 32] if smoke else [400, 400]))
        self.methods = methods
        info = self.data.info
        self.model.setup_sequence(info)
        for method in methods:
            method.check_compatible(self.model, self.data, info)
            method.setup_sequence(self.model, self.data, RunContext(seed=0))
        self.task = -1
        self.batches = iter(())

    def start_task(self, task: int) -> None:
        if self.task >= 0:
            done = self.data.tasks[self.task]
            self.model.on_task_end(done)
            for method in self.methods:
                method.on_task_end(self.model, done)
            self.data.on_task_end(self.task)
        self.task = task
        self.data.set_task(task)
        self.model.on_task_start(self.data.tasks[task])
        for method in self.methods:
            method.on_task_start(self.model, self.data.tasks[task])
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.trainable_parameters(), lr=1e-3)
        self.batches = iter(())

    def _batch(self) -> dict:
        batch = next(self.batches, None)
        if batch is None:
            self.batches = iter(self.data.train_dataloader())
            batch = next(self.batches)
        return batch

    def step(self) -> None:
        batch = self._batch()
        loss = self.model.training_step(batch, 0)
        loss.backward()
        for method in self.methods:
            method.on_before_optimizer_step(None, self.model, self.optimizer)
        self.optimizer.step()
        for method in self.methods:
            method.on_train_batch_end(None, self.model, None, batch, 0)
        self.optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="digits, a tiny MLP, a few steps: seconds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for zoo_cost.json")
    parser.add_argument("--warmup", type=int, default=None, help="training steps on task 1 before the boundary")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per arm and round")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = parser.parse_args()
    warmup = args.warmup or (5 if args.smoke else 100)
    steps, rounds = args.steps or (3 if args.smoke else 20), args.rounds or (2 if args.smoke else 7)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(1)

    built = {name: Arm(make(), args.smoke) for name, make in arms(args.smoke).items()}
    boundary_s = {}
    for name, arm in built.items():
        arm.start_task(0)
        for _ in range(warmup):
            arm.step()
        start = clock()
        arm.start_task(1)  # the task's end and the next one's start: memories, importances, exemplars
        boundary_s[name] = clock() - start
        arm.step()  # first step of the task outside the timing (loaders, caches)
    step_s: dict[str, list[float]] = {name: [] for name in built}
    order = list(built)
    for r in range(rounds):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            start = clock()
            for _ in range(steps):
                built[name].step()
            step_s[name].append((clock() - start) / steps)
    median = {name: statistics.median(times) for name, times in step_s.items()}
    base = median["fine-tuning"]
    result = {
        "ratio_over_finetuning": {name: median[name] / base for name in built if name != "fine-tuning"},
        "targets_max_ratio": TARGETS,
        "within_target": {name: median[name] / base <= limit for name, limit in TARGETS.items()},
        "median_step_ms": {name: 1000 * value for name, value in median.items()},
        "step_ms_per_round": {name: [1000 * t for t in times] for name, times in step_s.items()},
        "task_boundary_s": boundary_s,
        "task_boundary_note": "one task boundary (task 1 -> 2): the model's and the method's hooks, e.g. MAS's importance "
        "over every training sample of task 1, iCaRL's herding and class means, A-GEM's memory; fine-tuning's is the baseline",
        "settings": {
            "smoke": args.smoke,
            "model": "MLP 32-32" if args.smoke else "MLP 784-400-400",
            "data": "split digits" if args.smoke else "split Fashion-MNIST, 5 tasks",
            "batch_size": built["fine-tuning"].data.batch_size,
            "warmup_steps_on_task_1": warmup,
            "timed_steps_per_round": steps,
            "rounds": rounds,
            "clock": "process CPU time" if args.clock == "cpu" else "wall time",
            "threads": torch.get_num_threads(),
            "methods": {name: [m.describe() for m in arm.methods] for name, arm in built.items()},
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "zoo_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    for name in built:
        ratio = "" if name == "fine-tuning" else f"  x{median[name] / base:.2f}"
        print(f"{name:28s} {1000 * median[name]:7.2f} ms{ratio:8s}  task boundary {boundary_s[name]:.2f} s")


if __name__ == "__main__":
    main()
