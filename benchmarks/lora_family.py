"""The LoRA family's cost, in one run: training step time and trainable parameters per task of
IncLoRA, O-LoRA, InfLoRA and OSF against sequential LoRA, on the same model and batches.

For each model, one copy per method is built (the same seed, so the same base weights) and set
up for a 3-task text sequence, as in a run. Within each task the methods' training steps
(forward, backward with every loss term the method adds, AdamW step) alternate batch by batch,
in a rotating order, so load from other processes hits them alike; the first batch warms up.
Between tasks each method does what it does in a run (new adapter, InfLoRA's representation
passes, OSF's SVD and merge): those one-off costs are timed apart. LoRA: r 8 on q/k/v/o (the
lm_cpu configs'); OSF wraps the same four projections. Medians; ratios to SeqLoRA first.

    OMP_NUM_THREADS=1 python benchmarks/lora_family.py --models smollm2,tiny --batch-size 4 --max-length 32
    OMP_NUM_THREADS=1 python benchmarks/lora_family.py --smoke --out /tmp/lora_family   # seconds

Step time is the process's CPU time (one thread): steadier than wall time on a shared machine
(both are recorded).

Target: O-LoRA and InfLoRA step time <= 1.15x SeqLoRA's. Results: ``OUT/lora_family.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from clight.contract import RunContext  # noqa: E402
from clight.data.text import TextTaskSequence  # noqa: E402
from clight.methods.inc_lora import IncLoRA  # noqa: E402
from clight.methods.inflora import InfLoRA  # noqa: E402
from clight.methods.o_lora import OLoRA  # noqa: E402
from clight.methods.osf import OSF  # noqa: E402
from clight.methods.seq_lora import SeqLoRA  # noqa: E402
from clight.models.causal_lm import ContinualCausalLM  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
CLOCKS = ("cpu", "wall")
LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": TARGETS}
METHODS = {
    "seq_lora": lambda: SeqLoRA(save_adapters=False),
    "inc_lora": lambda: IncLoRA(save_adapters=False),
    "o_lora": lambda: OLoRA(save_adapters=False),
    "inflora": lambda: InfLoRA(save_adapters=False),
    "osf": lambda: OSF(target_modules=TARGETS, save_adapters=False),
}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cpu_and_wall(fn) -> tuple[float, float]:
    """The process's CPU seconds (what the step computes: steadier than wall time on a shared
    machine; one thread) and the wall seconds of ``fn``."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def train_step(model, optimizer, batch) -> None:
    """What ``ContinualModule.training_step`` computes (task loss plus every method's terms), then AdamW."""
    loss, outputs = model.task_loss(batch)
    for term in model.loss_terms.values():
        loss = loss + term(model, batch, outputs)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def trainable(model) -> int:
    return sum(p.numel() for p in model.trainable_parameters())


def run_model(name: str, args) -> dict:
    data = TextTaskSequence(
        tasks=["rt_sentiment", "tweet_sentiment", "rt_subjectivity"],
        tokenizer="char" if name == "tiny" else name,
        max_length=args.max_length,
        max_train_per_task=args.batch_size * (args.steps + 1),
        max_test_per_task=2,
        general_samples=2,
        heldout_general=0,
        general_mode="none",
        batch_size=args.batch_size,
    )
    models, methods = {}, {}
    for arm, make in METHODS.items():
        torch.manual_seed(0)
        models[arm] = ContinualCausalLM(name, lora=None if arm == "osf" else LORA)
        models[arm].setup_sequence(data.info)
        methods[arm] = make()
        methods[arm].check_compatible(models[arm], data, data.info)
        methods[arm].setup_sequence(models[arm], data, RunContext(seed=0))
    steps = {arm: [] for arm in METHODS}
    params = {arm: [] for arm in METHODS}
    one_off = {arm: [] for arm in METHODS}
    for task in data.tasks:
        data.set_task(task.index)
        optimizers, started = {}, {}
        for arm, model in models.items():
            model.on_task_start(task)
            started[arm] = timed(lambda m=model, a=arm, t=task: methods[a].on_task_start(m, t))
            model.train()
            optimizers[arm] = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3, weight_decay=0.0)
            params[arm].append(trainable(model))
        times: dict = {arm: [] for arm in METHODS}
        arms = list(METHODS)
        for i, batch in enumerate(data.train_dataloader()):
            for arm in arms[i % len(arms) :] + arms[: i % len(arms)]:
                seconds = cpu_and_wall(lambda a=arm, b=batch, o=optimizers: train_step(models[a], o[a], b))
                if i > 0:
                    times[arm].append(seconds)
        for arm, model in models.items():
            one_off[arm].append(started[arm] + timed(lambda m=model, a=arm, t=task: methods[a].on_task_end(m, t)))
            steps[arm].append(times[arm])
        medians = {arm: statistics.median(c for c, _ in times[arm]) for arm in METHODS}
        print(f"{name} task {task.index} (CPU): " + ", ".join(f"{a} {s * 1000:.1f} ms" for a, s in medians.items()), flush=True)
    median = {
        clock: {arm: [statistics.median(s[k] for s in t) for t in steps[arm]] for arm in METHODS}
        for k, clock in enumerate(CLOCKS)
    }
    ratios = {
        clock: {arm: [m / b for m, b in zip(median[clock][arm], median[clock]["seq_lora"])] for arm in METHODS}
        for clock in CLOCKS
    }
    return {
        "step_time_ratio_over_seq_lora_per_task": ratios["cpu"],
        "wall_step_time_ratio_over_seq_lora_per_task": ratios["wall"],
        "trainable_parameters_per_task": params,
        "median_step_s_per_task": median,
        "between_tasks_wall_s_per_task": one_off,
        "step_s": {arm: [[list(s) for s in t] for t in steps[arm]] for arm in METHODS},
        "parameters": sum(p.numel() for p in models["osf"].parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,smollm2", help="comma-separated: tiny, smollm2")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per task and method (default: tiny 40, smollm2 6)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 2 steps per task: checks it runs (seconds)")
    parser.add_argument("--out", default="benchmarks/results", help="folder of lora_family.json")
    args = parser.parse_args()
    names = args.models.split(",")
    if args.smoke:
        names, args.batch_size, args.max_length = ["tiny"], 2, 32
    results = {}
    out = Path(args.out) / "lora_family.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        steps = 2 if args.smoke else (args.steps or (40 if name == "tiny" else 6))
        results[name] = run_model(name, argparse.Namespace(**{**vars(args), "steps": steps}))
        results[name]["setup"] = {
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "timed_steps_per_task": steps,
            "lora": LORA,
            "osf_targets": TARGETS,
            "optimizer": "AdamW(lr=1e-3)",
            "torch_threads": torch.get_num_threads(),
        }
        out.write_text(json.dumps(results, indent=2))  # after each model: a long run keeps what it finished
    print(json.dumps({n: r["step_time_ratio_over_seq_lora_per_task"] for n, r in results.items()}, indent=2))


if __name__ == "__main__":
    main()
