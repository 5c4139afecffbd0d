"""What clight costs over a hand-written PyTorch loop, measured the way a user compares frameworks.

The protocol: split Fashion-MNIST, 5 class-incremental tasks of 2 classes, MLP 784-256-256-10,
SGD (lr 0.01, momentum 0.9), batch 64, one epoch per task, every task scored after every task.
clight runs it as a user does (``SequenceRunner`` with its defaults: epoch checkpoints after 10 s
of training, the progress bar, the CSV logger; validation off because the hand-written loop has none);
``handwritten_cl.py`` runs it in plain PyTorch over tensors already in memory. Parts:

- ``small``: fine-tuning, replay, EWC and LwF in both, in-process: time per step (median gap
  between step starts), training time (the fits), the methods' work between tasks (EWC's Fisher,
  LwF's copy of the model, the replay memory) and the evaluation rows; fine-tuning also as the
  smallest Lightning program (``bare_lightning.py``), which splits the gap into Lightning's and clight's;
- ``large``: fine-tuning of an MLP 784-1000-1000-10 at batch 128 (``--large-steps`` steps per
  task), where the fixed cost of a step is diluted;
- ``process``: whole processes, the hand-written script against ``clight fit --config`` (written
  from the same protocol), and the start-up of ``import torch``, ``import lightning`` (and of
  torch with the packages torchmetrics imports when they are installed: torchvision, scipy,
  matplotlib, transformers), ``clight --help`` and ``import clight`` with its runner.

Arms alternate inside every round; figures are medians over rounds (the per-round values are in
the JSON), ratios clight / hand-written first. Writes ``overhead.json`` in ``--out DIR`` (default
benchmarks/results). ``--smoke``: one round of 2 steps per task, no warm-up, without EWC (its
Fisher takes seconds) and the large part (the small part runs the same code), and of the process
part only the two whole runs (no start-up figures).

    python benchmarks/overhead.py                       # all parts, 3 rounds, 2 threads, wall time
    python benchmarks/overhead.py --clock cpu --threads 1 --rounds 5   # on a machine shared with other jobs
    python benchmarks/overhead.py --parts small --methods finetune lwf
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bare_lightning  # noqa: E402
import clight_arms  # noqa: E402
import handwritten_cl as hand  # noqa: E402
import handwritten_plasticity  # noqa: E402
from common import add_benchmark_arguments, result_file, smoke_sizes  # noqa: E402

METHODS = hand.METHODS
CONFIG = """seed_everything: 0
model:
  class_path: clight.ContinualClassifier
  init_args:
    backbone: {{class_path: clight.MLP, init_args: {{hidden_sizes: [256, 256]}}}}
    optimizer: {{class_path: torch.optim.SGD, init_args: {{lr: 0.01, momentum: 0.9}}}}
data:
  scenario: {{class_path: clight.SplitClasses, init_args: {{source: fashion_mnist, num_tasks: 5}}}}
  batch_size: 64
trainer: {{accelerator: cpu, devices: 1, max_epochs: 1, limit_val_batches: 0}}
runner: {{max_steps_per_task: {steps}}}
run_dir: {run_dir}
"""


def median_step_ms(starts: list[float]) -> float:
    return 1e3 * statistics.median(b - a for a, b in zip(starts, starts[1:]))


def _split_arms(args, tasks, m: str) -> list:
    steps = args.small_steps or None
    arms = [
        ("hand", lambda: hand.run(m, tasks, [256, 256], max_steps=args.small_steps)),
        ("clight", lambda: clight_arms.split_run(m, [256, 256], 64, steps_per_task=steps, clock=args.clock)),
    ]
    if m == "finetune":  # Lightning's own loop, with every optional feature off
        arms.insert(1, ("lightning", lambda: bare_lightning.run(tasks, [256, 256], max_steps=args.small_steps)))
    return arms


def part_small(args, tasks) -> dict:
    keys = ("step_ms", "train_s", "between_tasks_s", "eval_s", "initial_row_s", "tasks_s", "run_s", "fixed_s")
    rounds = {f"{arm}_{m}": {k: [] for k in keys} for m in args.methods for arm in ("clight", "hand")}
    if "finetune" in args.methods:
        rounds["lightning_finetune"] = {k: [] for k in keys}
    if not args.smoke:  # warm-up: first-use costs of both arms
        clight_arms.split_run("finetune", [256, 256], 64, steps_per_task=20)
        hand.run("finetune", tasks, [256, 256], max_steps=20)
    for r in range(args.rounds):
        for m in args.methods:
            arms = _split_arms(args, tasks, m)
            for arm, fn in arms if r % 2 == 0 else arms[::-1]:
                out = fn()
                if arm != "clight":  # the whole of the hand-written (and bare Lightning) loop is its tasks
                    out["tasks_s"] = out["run_s"] = out["train_s"] + out["between_tasks_s"] + out["eval_s"]
                record = rounds[f"{arm}_{m}"]
                for k in keys[1:]:
                    record[k].append(out.get(k, 0.0))
                record["step_ms"].append(median_step_ms(out["starts"]))
                if arm == "clight":
                    record.setdefault("per_task_ms", []).append(out["per_task_ms"])
                    record.setdefault("per_run_s", []).append(out["per_run_s"])
                print(
                    f"round {r} {arm:9s} {m:8s} step {record['step_ms'][-1]:.3f} ms, tasks {out['tasks_s']:.2f} s "
                    f"(train {out['train_s']:.2f}, between {out['between_tasks_s']:.2f}, eval {out['eval_s']:.2f}), "
                    f"run {out['run_s']:.2f} s",
                    flush=True,
                )
    return rounds


def part_plasticity(args) -> dict:
    """The plasticity protocol: ``configs/plasticity_backprop.yaml`` against ``handwritten_plasticity.py``."""
    data = handwritten_plasticity.load_data()
    rounds: dict = {"hand": {"run_s": [], "seconds": []}, "clight": {"run_s": [], "tasks_s": [], "fixed_s": []}}
    rounds["clight"].update(per_task_ms=[], per_run_s=[])
    rounds["bare"] = {"run_s": [], "seconds": []}
    with tempfile.TemporaryDirectory() as tmp:
        arms = [
            ("hand", lambda n, e: handwritten_plasticity.run(data, handwritten_plasticity.draw_tasks(data, n), epochs=e)),
            (
                "bare",
                lambda n, e: handwritten_plasticity.run(
                    data, handwritten_plasticity.draw_tasks(data, n), epochs=e, train=bare_lightning.train_plasticity
                ),
            ),
            ("clight", lambda n, e: clight_arms.plasticity_run(n, f"{tmp}/run_{time.time_ns()}", args.clock, epochs=e)),
        ]
        if not args.smoke:  # warm-up
            for _, fn in arms:
                fn(2, 1)
        for r in range(args.rounds):
            for arm, fn in arms if r % 2 == 0 else arms[::-1]:
                out = fn(args.plasticity_tasks, args.plasticity_epochs)
                record = rounds[arm]
                record["run_s"].append(out["run_s"])
                if arm in ("hand", "bare"):
                    record["seconds"].append({k: v for k, v in out.items() if k.endswith("_s")})
                else:
                    for k in ("tasks_s", "fixed_s", "per_task_ms", "per_run_s"):
                        record[k].append(out[k])
                print(f"round {r} plasticity {arm:6s} {args.plasticity_tasks} tasks: {out['run_s']:.1f} s", flush=True)
    return rounds


def part_fisher(args) -> dict:
    """EWC's Fisher passes in fresh processes (first-call costs count), by path."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    rounds: dict = {"batched": [], "looped": [], "auto": []}
    for r in range(args.rounds):
        for path in rounds if r % 2 == 0 else reversed(list(rounds)):
            code = f"import json, clight_arms; print(json.dumps(clight_arms.fisher_passes({path!r}, {args.threads}, {args.clock!r})))"
            out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True, cwd=HERE)
            rounds[path].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r} fisher {path:7s} {rounds[path][-1]}", flush=True)
    return rounds


def part_large(args, tasks) -> dict:
    rounds = {"clight": [], "hand": []}
    for r in range(args.rounds):
        for arm in ("hand", "clight") if r % 2 == 0 else ("clight", "hand"):
            if arm == "hand":
                out = hand.run("finetune", tasks, [1000, 1000], batch_size=128, max_steps=args.large_steps)
            else:
                out = clight_arms.split_run("finetune", [1000, 1000], 128, steps_per_task=args.large_steps, clock=args.clock)
            rounds[arm].append(median_step_ms(out["starts"]))
            print(f"round {r} large {arm:6s} step {rounds[arm][-1]:.2f} ms", flush=True)
    return rounds


def part_process(args) -> dict:
    python = sys.executable
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
    }
    commands = {
        "import_torch": [python, "-c", "import torch"],
        "import_lightning": [python, "-c", "import lightning"],
        # what Lightning's import of torchmetrics pulls in besides torch (torchmetrics imports them when installed)
        "import_torch_and_torchmetrics_extras": [
            python,
            "-c",
            "import torch, torchvision, scipy.signal, matplotlib.pyplot, transformers",
        ],
        "clight_help": [python, "-m", "clight", "--help"],
        "import_clight_runner": [python, "-c", "import clight; clight.SequenceRunner"],
        "hand_process": [
            python,
            str(HERE / "handwritten_cl.py"),
            "--threads",
            str(args.threads),
            "--max-steps",
            str(args.small_steps),
        ],
    }
    if args.smoke:  # the two whole runs only
        commands = {"hand_process": commands["hand_process"]}
    rounds = {k: [] for k in [*commands, "clight_process"]}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            config = Path(tmp) / f"fit_{r}.yaml"
            config.write_text(CONFIG.format(run_dir=f"{tmp}/run_{r}", steps=args.small_steps or "null"))
            runs = {**commands, "clight_process": [python, "-m", "clight", "fit", "--config", str(config)]}
            for name, command in runs.items() if r % 2 == 0 else reversed(runs.items()):
                began, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
                subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
                rounds[name].append(cpu if args.clock == "cpu" else time.perf_counter() - began)
                print(f"round {r} {name:22s} {rounds[name][-1]:.2f} s ({args.clock})", flush=True)
    return rounds


med = statistics.median


def per_round(clight: list[float], hand: list[float]) -> list[float]:
    return [round(c / h, 3) for c, h in zip(clight, hand)]


MEANINGS = {
    "step_small_mlp": "median time of a training step, MLP 784-256-256-10 at batch 64 (the headline)",
    "step_small_mlp_bare_lightning_over_handwritten": "the smallest Lightning program of the fine-tuning arm "
    "(benchmarks/bare_lightning.py: no logger, checkpoints, progress bar or DataLoader) against the hand-written loop",
    "step_small_mlp_clight_over_bare_lightning": "what clight adds to Lightning's own loop, per step",
    "step_large_mlp": "median time of a training step, MLP 784-1000-1000-10 at batch 128",
    "process_fit": "a whole `clight fit` process against the whole hand-written script, imports included",
    "process_without_start_up": "the same, less the start-up of each (import clight with its runner; import torch)",
    "start_up": "`import clight; clight.SequenceRunner` against `import torch`",
    "train_s": "the training of all 5 tasks (clight: the Trainer fits)",
    "between_tasks_s": "the methods' work between tasks: EWC's Fisher, LwF's copy of the model, the replay memory",
    "eval_s": "the 5 accuracy rows after the tasks (clight's extra row for the untrained model is initial_row_s)",
    "step_ms_added_to_finetune": "a method's step minus the fine-tuning step, clight's over the hand-written loop's",
    "per_task_split": "the fine-tuning arm's tasks: everything clight does inside its loop over the fits (training, the "
    "fixed work around it, the methods, evaluation; not the once-per-run work) against the hand-written loop's training "
    "and evaluation (the target)",
    "run_split": "the same, the whole SequenceRunner.run (with the untrained model's row, the run folder, the final report)",
    "tasks_s": "per_task_split's time, all 5 tasks",
    "run_s": "run_split's time",
    "fixed_s": "clight's tasks less the work itself (training steps, evaluation, the methods' between-task hooks)",
    "plasticity_sequence": "configs/plasticity_backprop.yaml (permuted Fashion-MNIST, --plasticity-tasks tasks) as "
    "SequenceRunner.run against benchmarks/handwritten_plasticity.py doing the same work (the target)",
    "plasticity_per_task": "the same, clight's loop over the fits only (not the once-per-run work)",
    "plasticity_bare_lightning_over_handwritten": "the hand-written plasticity loop with only its training moved into the "
    "smallest Lightning program (bare_lightning.train_plasticity: a fresh Trainer per task, no logger, checkpoints, "
    "validation loop or DataLoader): the floor of any framework that trains through Lightning's loop",
    "plasticity_clight_over_bare_lightning": "what clight adds over that floor",
    "per_task_fixed_cost_ms": "clight's time per task, row by row (benchmarks/costs.py: exclusive times, medians "
    "over rounds); training_steps, evaluation and method_hooks are the work itself, the rest is fixed cost",
    "per_run_s": "clight's once-per-run rows (seconds)",
    "fisher": "EWC's Fisher pass (200 samples, MLP 784-256-256-10, split Fashion-MNIST) in a fresh process for each "
    "path: seconds of the first pass and of all 5, by path; auto is what EWC runs",
}


def _row_medians(records: list[dict]) -> dict:
    keys = sorted({k for r in records for k in r})
    return {k: round(med([r.get(k, 0.0) for r in records]), 3) for k in keys}


def summarize_new_parts(small: dict, plasticity: dict, fisher: dict, headline: dict, spread: dict) -> dict:
    """The per-task figures of the split and plasticity protocols and the Fisher passes."""
    extra: dict = {}
    if "clight_finetune" in small:
        c, h = small["clight_finetune"], small["hand_finetune"]
        headline["per_task_split"] = med(c["tasks_s"]) / med(h["tasks_s"])
        headline["run_split"] = med(c["run_s"]) / med(h["tasks_s"])
        spread["per_task_split"] = per_round(c["tasks_s"], h["tasks_s"])
        extra["per_task_fixed_cost_ms"] = {"split_finetune": _row_medians(c["per_task_ms"])}
        extra["per_run_s"] = {"split_finetune": _row_medians(c["per_run_s"])}
    if plasticity:
        c, h = plasticity["clight"], plasticity["hand"]
        headline["plasticity_sequence"] = med(c["run_s"]) / med(h["run_s"])
        headline["plasticity_per_task"] = med(c["tasks_s"]) / med(h["run_s"])
        spread["plasticity_sequence"] = per_round(c["run_s"], h["run_s"])
        extra.setdefault("per_task_fixed_cost_ms", {})["plasticity"] = _row_medians(c["per_task_ms"])
        extra.setdefault("per_run_s", {})["plasticity"] = _row_medians(c["per_run_s"])
        extra["plasticity_handwritten_s"] = _row_medians(h["seconds"])
        if plasticity.get("bare", {}).get("run_s"):
            b = plasticity["bare"]
            headline["plasticity_bare_lightning_over_handwritten"] = med(b["run_s"]) / med(h["run_s"])
            headline["plasticity_clight_over_bare_lightning"] = med(c["run_s"]) / med(b["run_s"])
            extra["plasticity_bare_lightning_s"] = _row_medians(b["seconds"])
    if fisher:
        extra["fisher"] = {
            path: {"first_pass_s": med([r["passes"][0] for r in runs]), "run_s": med([sum(r["passes"]) for r in runs])}
            for path, runs in fisher.items()
        }
        extra["fisher"]["auto_chooses"] = fisher["auto"][0]["path"]
    return extra


def summarize(args, small, large, process, plasticity=None, fisher=None) -> dict:
    headline, methods, medians, spread = {}, {}, {}, {}
    if small:
        c, h = small["clight_finetune"] if "finetune" in args.methods else None, small.get("hand_finetune")
        if c:
            headline["step_small_mlp"] = med(c["step_ms"]) / med(h["step_ms"])
            spread["step_small_mlp"] = per_round(c["step_ms"], h["step_ms"])
            bare = small["lightning_finetune"]["step_ms"]
            headline["step_small_mlp_bare_lightning_over_handwritten"] = med(bare) / med(h["step_ms"])
            headline["step_small_mlp_clight_over_bare_lightning"] = med(c["step_ms"]) / med(bare)
            medians["step_small_mlp_bare_lightning_ms"] = med(bare)
            spread["step_small_mlp_clight_over_bare_lightning"] = per_round(c["step_ms"], bare)
        for m in args.methods:
            c, h = small[f"clight_{m}"], small[f"hand_{m}"]
            methods[m] = {k: med(c[k]) / med(h[k]) for k in h if med(h[k]) > 0}
            medians[m] = {k: {"clight": med(c[k]), "hand": med(h[k])} for k in h}
            spread[f"step_{m}"] = per_round(c["step_ms"], h["step_ms"])
        if "finetune" in args.methods:  # what each method adds to a fine-tuning step (EWC's penalty, LwF's teacher)
            base = {arm: med(small[f"{arm}_finetune"]["step_ms"]) for arm in ("clight", "hand")}
            for m in args.methods:
                extra = {arm: med(small[f"{arm}_{m}"]["step_ms"]) - base[arm] for arm in ("clight", "hand")}
                if m != "finetune":
                    methods[m]["step_ms_added_to_finetune"] = extra["clight"] / extra["hand"] if extra["hand"] > 0 else None
                    medians[m]["step_ms_added_to_finetune"] = extra
    if large:
        headline["step_large_mlp"] = med(large["clight"]) / med(large["hand"])
        medians["step_large_mlp_ms"] = {"clight": med(large["clight"]), "hand": med(large["hand"])}
        spread["step_large_mlp"] = per_round(large["clight"], large["hand"])
    if process:
        headline["process_fit"] = med(process["clight_process"]) / med(process["hand_process"])
        medians["process_s"] = {k: med(v) for k, v in process.items()}
        spread["process_fit"] = per_round(process["clight_process"], process["hand_process"])
    if "import_torch" in process:
        run = (
            [c - s for c, s in zip(process["clight_process"], process["import_clight_runner"])],
            [h - s for h, s in zip(process["hand_process"], process["import_torch"])],
        )
        headline["process_without_start_up"] = med(run[0]) / med(run[1])
        headline["start_up"] = med(process["import_clight_runner"]) / med(process["import_torch"])
    extra = summarize_new_parts(small, plasticity or {}, fisher or {}, headline, spread)
    return {
        "ratios_clight_over_handwritten": headline,
        "targets": {
            "per_task_split": "<= 1.5",
            "plasticity_sequence": "<= 1.5",
            "step_small_mlp": "<= 1.5 (aim 1.3)",
            "step_large_mlp": "<= 1.05",
            "process_fit": "<= 1.5",
            "between_tasks_s of ewc and lwf": "<= 1",
        },
        "ratios_per_method": methods,
        **extra,
        "per_round_ratios": spread,
        "medians": medians,
        "meaning": MEANINGS,
        "per_round": {
            k: v
            for k, v in {
                "small": small,
                "large_step_ms": large,
                "process_s": process,
                "plasticity": plasticity,
                "fisher": fisher,
            }.items()
            if v
        },
        "setup": {
            "command": " ".join(["python", "benchmarks/overhead.py", *sys.argv[1:]]),
            "protocol": "split Fashion-MNIST, 5 class-incremental tasks, MLP 784-256-256-10, SGD lr 0.01 momentum 0.9, "
            "batch 64, 1 epoch per task, 10% of each task held out (unused), every task scored after every task",
            "large": f"MLP 784-1000-1000-10, batch 128, {args.large_steps} steps per task",
            "replay": "class-balanced memory of 1000, 64 replayed samples added to each batch",
            "ewc": "online EWC, lambda 100, Fisher of 200 samples",
            "lwf": "T=2, alpha 1, previous model frozen",
            "clight_settings": "SequenceRunner defaults (epoch checkpoints after 10 s of training, tqdm bar every 10 steps, CSV logger), limit_val_batches=0",
            "plasticity": f"configs/plasticity_backprop.yaml with {args.plasticity_tasks} tasks of "
            f"{args.plasticity_epochs} epochs (permuted Fashion-MNIST, 1200 training / 1200 validation / 1000 test samples "
            "per task, MLP 784-256-256-256-10, batch 16, SGD 0.3, gradient clipping 20, PlasticityMonitor); "
            "hand-written: benchmarks/handwritten_plasticity.py",
            "handwritten": "benchmarks/handwritten_cl.py: torch and numpy only, tensors in memory, no DataLoader",
            "clock": "CPU time (process_time; children's user+sys for processes)" if args.clock == "cpu" else "wall time",
            "rounds": args.rounds,
            "threads": args.threads,
            "small_steps_per_task": args.small_steps or "one epoch",
            "smoke": args.smoke,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores" + (f"; {args.note}" if args.note else ""),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = ["small", "plasticity", "fisher", "large", "process"]
    parser.add_argument("--parts", nargs="+", choices=parts, default=parts)
    parser.add_argument("--plasticity-tasks", type=int, default=100)
    parser.add_argument("--plasticity-epochs", type=int, default=3)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--large-steps", type=int, default=40)
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: CPU time of the process (children's for the process part), for a machine shared "
        "with other jobs, where wall time mostly measures waiting for a core; use with --threads 1",
    )
    parser.add_argument("--note", default="", help="a word on the machine (e.g. shared with other jobs)")
    parser.add_argument("--small-steps", type=int, default=0, help="at most this many steps per task (0: one epoch)")
    add_benchmark_arguments(parser)
    args = parser.parse_args()
    smoke_sizes(
        args,
        rounds=1,
        small_steps=2,
        threads=1,
        methods=[m for m in args.methods if m != "ewc"],
        parts=[p for p in args.parts if p not in ("large", "fisher")],
        plasticity_tasks=2,
        plasticity_epochs=1,
    )
    out = result_file(args, "overhead.json")
    torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        hand.clock = handwritten_plasticity.clock = time.process_time
    tasks = hand.load_tasks() if {"small", "large"} & set(args.parts) else None
    small = part_small(args, tasks) if "small" in args.parts else {}
    large = part_large(args, tasks) if "large" in args.parts else {}
    process = part_process(args) if "process" in args.parts else {}
    plasticity = part_plasticity(args) if "plasticity" in args.parts else {}
    fisher = part_fisher(args) if "fisher" in args.parts else {}
    result = summarize(args, small, large, process, plasticity, fisher)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps({k: result[k] for k in ("ratios_clight_over_handwritten", "ratios_per_method", "per_round_ratios")}, indent=2)
    )


if __name__ == "__main__":
    main()
