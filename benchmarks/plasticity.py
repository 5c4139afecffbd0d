"""Per-step cost of continual backprop against plain backprop on a 3x2000 MLP, in one run.

Both arms train the same ContinualClassifier(MLP([2000, 2000, 2000])) with SGD in a Lightning
Trainer on the same fixed batches; the continual-backprop arm carries the ContinualBackprop
callback (paper defaults: rho 1e-4, maturity 100, eta 0.99), warmed up past maturity so that it
really replaces units while it is timed. Arms alternate in rounds; the step time is the median
interval between consecutive ``on_train_batch_start`` calls (the whole step: forward, backward,
optimizer, every callback). Writes ``plasticity.json`` in ``--out DIR`` (default benchmarks/results).

    OMP_NUM_THREADS=1 python benchmarks/plasticity.py [--steps 60] [--rounds 3] [--batch 64] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from common import add_benchmark_arguments, result_file, smoke_sizes  # noqa: E402

from clight.data.task import SequenceInfo, Task  # noqa: E402
from clight.methods.plasticity import ContinualBackprop  # noqa: E402
from clight.models.backbones import MLP  # noqa: E402
from clight.models.classifier import ContinualClassifier  # noqa: E402


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self.starts.append(time.perf_counter())

    def intervals(self) -> list[float]:
        return [b - a for a, b in zip(self.starts[1:], self.starts[2:])]  # skip the first (warm-up) interval


class FixedBatches(torch.utils.data.Dataset):
    def __init__(self, n: int, batch: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n * batch, 1, 28, 28, generator=g)
        self.y = torch.randint(0, 10, (n * batch,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {"input": self.x[i], "target": self.y[i], "task_id": torch.tensor(0)}


def fit(model, steps: int, batch: int, callbacks: list, accelerator: str) -> None:
    loader = torch.utils.data.DataLoader(FixedBatches(steps, batch), batch_size=batch, shuffle=False)
    L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=steps,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        num_sanity_val_steps=0,
    ).fit(model, loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per arm per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--width", type=int, default=2000, help="units of each of the 3 hidden layers")
    parser.add_argument("--maturity", type=int, default=100, help="continual backprop's maturity threshold")
    add_benchmark_arguments(parser)
    args = parser.parse_args()
    smoke_sizes(args, steps=3, rounds=1, batch=8, width=32, maturity=2)
    out = result_file(args, "plasticity.json")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    info = SequenceInfo(
        setting="domain_incremental", num_tasks=1, num_classes=10, task_classes=[list(range(10))], input_shape=(1, 28, 28)
    )

    def model():
        torch.manual_seed(0)
        m = ContinualClassifier(MLP([args.width] * 3), optimizer=lambda p: torch.optim.SGD(p, lr=0.01))
        m.setup_sequence(info)
        m.on_task_start(Task(0, "t", None, None, None, list(range(10))))
        return m

    plain, cbp_model = model(), model()
    cbp = ContinualBackprop(replacement_rate=1e-4, maturity_threshold=args.maturity, decay=0.99)
    fit(cbp_model, args.maturity + 5, args.batch, [cbp], args.accelerator)  # ages past maturity: replacements happen while timed
    fit(plain, 5, args.batch, [], args.accelerator)
    replaced_before = sum(cbp.replaced.values())
    # time spent inside the callback itself (its per-step work: statistics, utility, replacement),
    # a figure that does not depend on how busy the machine is between the two arms
    inside: list[float] = []
    original = cbp.on_train_batch_end

    def timed(*a, **k):
        t0 = time.perf_counter()
        original(*a, **k)
        inside.append(time.perf_counter() - t0)

    cbp.on_train_batch_end = timed
    times = {"backprop": [], "continual_backprop": []}
    round_ratios = []
    for _ in range(args.rounds):
        medians = {}
        for name, m, cbs in (("backprop", plain, []), ("continual_backprop", cbp_model, [cbp])):
            timer = StepTimer()
            fit(m, args.steps, args.batch, cbs + [timer], args.accelerator)
            times[name] += timer.intervals()
            medians[name] = statistics.median(timer.intervals())
        round_ratios.append(medians["continual_backprop"] / medians["backprop"])
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "ratio_continual_backprop_over_backprop": med["continual_backprop"] / med["backprop"],
        "ratio_per_round": round_ratios,
        "median_of_round_ratios": statistics.median(round_ratios),
        "target_ratio": 1.10,
        "callback_s_per_step_median": statistics.median(inside),
        "ratio_from_callback_time": (med["backprop"] + statistics.median(inside)) / med["backprop"],
        "median_step_s": med,
        "steps_timed": {k: len(v) for k, v in times.items()},
        "units_replaced_while_timed": sum(cbp.replaced.values()) - replaced_before,
        "setup": {
            "network": f"MLP 784-{args.width}-{args.width}-{args.width}-10, ReLU",
            "batch": args.batch,
            "optimizer": "SGD lr 0.01",
            "cbp": {"replacement_rate": 1e-4, "maturity_threshold": args.maturity, "decay": 0.99, "utility": "contribution"},
            "smoke": args.smoke,
            "accelerator": args.accelerator,
            "device": torch.cuda.get_device_name() if args.accelerator == "gpu" else platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "command": "OMP_NUM_THREADS=1 python benchmarks/plasticity.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k not in ("out", "smoke")),
    }
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
