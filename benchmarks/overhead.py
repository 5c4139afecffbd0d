"""Time per training step: clight fine-tuning against a hand-written PyTorch loop.

Same model (an MLP), same data (Fashion-MNIST as one task, the same TaskSequence loader),
same batch size, same optimizer, on the CPU. clight's step time is read between consecutive
``on_train_batch_start`` calls inside a real ``SequenceRunner`` fit, so it includes the data
loader, Lightning's loop, hooks, logging and the progress bar; the plain loop is timed the same
way. clight runs with its default rich progress bar and, as a third arm, without it. Variants
alternate over several rounds; the figure is the median over rounds of each
round's median step time, and the ratio clight / plain comes first.

    python benchmarks/overhead.py            # writes benchmarks/results/overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from clight import MLP, ContinualClassifier, SequenceRunner, SplitClasses, TaskSequence
from clight.methods import ContinualCallback

RESULTS = Path(__file__).parent / "results" / "overhead.json"


class StepClock(ContinualCallback):
    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())


def make_data(batch_size: int) -> TaskSequence:
    data = TaskSequence(SplitClasses("fashion_mnist", 1), batch_size=batch_size, seed=0)
    data.set_task(0)
    return data


def make_model(hidden: list[int]) -> ContinualClassifier:
    torch.manual_seed(0)
    return ContinualClassifier(MLP(hidden))


def median_step(starts: list[float], warmup: int) -> float:
    gaps = [b - a for a, b in zip(starts[warmup:], starts[warmup + 1 :])]
    return statistics.median(gaps)


def time_clight(args, progress_bar: bool = True) -> float:
    clock = StepClock()
    trainer = dict(accelerator="cpu", devices=1, limit_val_batches=0, enable_progress_bar=progress_bar)
    with tempfile.TemporaryDirectory() as tmp:
        runner = SequenceRunner(make_model(args.hidden), make_data(args.batch_size), methods=[clock], trainer=trainer,
                                run_dir=tmp + "/run", max_steps_per_task=args.steps, checkpoint_every_epoch=False)
        runner.run()
    return median_step(clock.starts, args.warmup)


def time_plain(args) -> float:
    data = make_data(args.batch_size)
    model = make_model(args.hidden)
    model.setup_sequence(data.info)
    model.on_task_start(data.tasks[0])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    starts: list[float] = []
    model.train()
    while len(starts) < args.steps:
        for batch in data.train_dataloader():
            starts.append(time.perf_counter())
            logits = model(batch["input"], batch["task_id"])
            loss = loss_fn(logits, batch["target"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if len(starts) >= args.steps:
                break
    starts.append(time.perf_counter())
    return median_step(starts, args.warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, nargs="+", default=[1000, 1000])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clight_times, quiet_times, plain_times = [], [], []
    for _ in range(args.rounds):
        plain_times.append(time_plain(args))
        clight_times.append(time_clight(args))
        quiet_times.append(time_clight(args, progress_bar=False))
    clight_ms, plain_ms = 1e3 * statistics.median(clight_times), 1e3 * statistics.median(plain_times)
    quiet_ms = 1e3 * statistics.median(quiet_times)
    result = {
        "ratio_clight_over_plain": clight_ms / plain_ms,
        "ratio_clight_without_progress_bar_over_plain": quiet_ms / plain_ms,
        "target": "<= 1.05",
        "clight_step_ms_median": clight_ms,
        "clight_without_progress_bar_step_ms_median": quiet_ms,
        "plain_step_ms_median": plain_ms,
        "overhead_ms_per_step": clight_ms - plain_ms,
        "per_round_ratio": [c / p for c, p in zip(clight_times, plain_times)],
        "model": f"MLP 784-{'-'.join(map(str, args.hidden))}-10",
        "batch_size": args.batch_size,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": os.uname().machine,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
