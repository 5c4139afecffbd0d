"""Scaling out: memory per rank and training throughput of five ways to fine-tune a causal LM
(full fine-tuning, LoRA, SPU, GeRe TM, MoE adapters) on 1 rank, 2 DDP ranks and 2 sharded ranks
(``strategy: sharded``: FSDP2 through Lightning's ModelParallelStrategy), each through clight's
SequenceRunner on a 2-task text sequence.

Every (layout, variant) runs in processes of its own, so each peak is its own: on the CPU the
peak resident memory of each rank's process (``ru_maxrss``, which includes the Python and
library baseline), on CUDA ``torch.cuda.max_memory_allocated``. Besides the peak, each rank adds
up what it holds after its first optimizer step: its parameters, their gradients and the
optimizer's state (its own shards when sharded). Throughput: the real tokens of all ranks' batches
per second, over the timed steps (after ``--warmup``), medians of the step times. The set-up of
each task's fit (from ``Trainer.fit`` to its first batch: the strategy's set-up, sharding, the
optimizer, the method's fit-start work) is timed for both tasks, and the sharding alone: the
second task reuses the sharded model.

    OMP_NUM_THREADS=1 python benchmarks/scale.py                          # CPU, a small Llama (minutes)
    python benchmarks/scale.py --device cuda --model smollm2 --precision bf16-mixed   # GPUs
    python benchmarks/scale.py --smoke --out /tmp/scale                   # seconds: full FT, 1 rank and 2 sharded

On CUDA the 2-rank layouts need 2 GPUs; with one GPU only the 1-rank layout runs (said in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

LAYOUTS = {"1 rank": ("single", 1), "2 DDP ranks": ("ddp", 2), "2 sharded ranks": ("sharded", 2)}
VARIANTS = ("full", "lora", "spu", "gere", "moe")
SMALL_LLAMA = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4)
LORA = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


# -- one (layout, variant), in its own processes ----------------------------------------------------
def _local_bytes(tensor) -> int:
    from clight.models.sharding import local

    t = local(tensor)
    return t.numel() * t.element_size()


def held_bytes(module, optimizer) -> dict:
    """Bytes this rank holds for parameters, gradients and optimizer state (its own shards)."""
    params = list(module.parameters())
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
    out = {
        "parameters": sum(_local_bytes(p) for p in params),
        "gradients": sum(_local_bytes(p.grad) for p in params if p.grad is not None),
        "optimizer": sum(_local_bytes(v) for v in state),
    }
    out["parameters_and_optimizer"] = out["parameters"] + out["optimizer"]
    return out


def _meter_class():
    from clight.methods.base import ContinualCallback

    class Meter(ContinualCallback):
        """Times every fit's set-up and training steps; counts tokens; reads what each rank holds."""

        state_layout: dict = {}

        def __init__(self, warmup: int) -> None:
            self.warmup, self.fits, self.held = warmup, [], None
            self.fit_called = 0.0  # set by the worker when each Trainer.fit is called

        def setup(self, trainer, pl_module, stage):
            self.fits.append({"setup_started": self.fit_called, "steps": [], "tokens": []})

        def on_train_start(self, trainer, pl_module):
            fit = self.fits[-1]
            fit["setup_seconds"] = time.perf_counter() - fit.pop("setup_started")

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._sync(trainer)
            self._started = time.perf_counter()
            self._tokens = int(batch["attention_mask"].sum())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self._sync(trainer)
            fit = self.fits[-1]
            fit["steps"].append(time.perf_counter() - self._started)
            fit["tokens"].append(self._tokens)
            if self.held is None:
                self.held = held_bytes(pl_module, trainer.optimizers[0])

        @staticmethod
        def _sync(trainer):
            if trainer.strategy.root_device.type == "cuda":
                torch.cuda.synchronize()

    return Meter


def methods_of(variant: str, smoke: bool) -> list:
    from clight.methods.general_replay import GeneralReplay
    from clight.methods.moe_adapters import MoEAdapters
    from clight.methods.selective_update import SPU

    if variant == "spu":
        return [SPU(fraction=0.1, importance_batches=0.25)]
    if variant == "gere":
        return [GeneralReplay("tm")]
    if variant == "moe":
        return [MoEAdapters(num_experts=8, top_k=2, bottleneck=32, ddas_samples=16, ae_steps=10 if smoke else 50)]
    return []


def worker(args) -> None:
    from clight import SequenceRunner
    from clight.data.text import TextTaskSequence
    from clight.models.causal_lm import ContinualCausalLM

    layout, devices = LAYOUTS[args.layout]
    steps = args.warmup + args.steps
    data = TextTaskSequence(
        tasks=["rt_sentiment", "rt_subjectivity"],
        tokenizer="char" if args.model == "small" else args.model,
        max_length=args.max_length,
        max_train_per_task=args.batch_size * (steps + 1),
        max_test_per_task=args.batch_size,
        general_samples=2 * args.batch_size,
        heldout_general=0,
        general_mode="append" if args.variant == "gere" else "none",
        batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
    )
    torch.manual_seed(0)
    model = ContinualCausalLM(
        "tiny" if args.model == "small" else args.model,
        lora=LORA if args.variant == "lora" else None,
        tiny_config=SMALL_LLAMA if args.model == "small" else None,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-4),
    )
    meter = _meter_class()(args.warmup)
    import lightning as L

    fit = L.Trainer.fit

    def timed_fit(trainer, *a, **k):  # a fit's set-up is timed from here: process group, mesh, sharding, optimizer
        meter.fit_called = time.perf_counter()
        return fit(trainer, *a, **k)

    L.Trainer.fit = timed_fit
    strategy = {"single": "auto", "ddp": "ddp", "sharded": "sharded"}[layout]
    if layout == "ddp" and args.variant == "moe":
        strategy = "ddp_find_unused_parameters_true"  # top-k routing leaves some experts without a gradient
    trainer = dict(
        accelerator=args.device,
        devices=devices,
        strategy=strategy,
        precision=args.precision,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    runner = SequenceRunner(
        model,
        data,
        methods=[*methods_of(args.variant, args.smoke), meter],
        trainer=trainer,
        run_dir=str(Path(args.run_root) / f"{layout}_{args.variant}"),
        seed=0,
        max_steps_per_task=steps,
        checkpoint_every_epoch=False,
        evaluate="current",
    )
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    runner.run()
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    mine = {"rank": rank, "peak_bytes": peak, "held": meter.held, "fits": meter.fits}
    ranks = [mine]
    if torch.distributed.is_initialized():
        ranks = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(ranks, mine)
    if rank == 0:
        Path(args.result_file).write_text(json.dumps({"ranks": ranks, "sharding": model.sharding.describe()}))
    if torch.distributed.is_initialized():  # not left to interpreter shutdown, where gloo's threads can abort the process
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


# -- the comparison -----------------------------------------------------------------------------
def summarize(raw: dict, warmup: int) -> dict:
    ranks = raw["ranks"]
    fits = [r["fits"] for r in ranks]
    steps = [
        max(rank_fits[f]["steps"][s] for rank_fits in fits) for f in range(2) for s in range(warmup, len(fits[0][f]["steps"]))
    ]
    tokens = [
        sum(rank_fits[f]["tokens"][s] for rank_fits in fits) for f in range(2) for s in range(warmup, len(fits[0][f]["tokens"]))
    ]
    mib = 2**20
    return {
        "tokens_per_second": round(sum(tokens) / sum(steps), 1),
        "step_seconds_median": round(statistics.median(steps), 5),
        "peak_mib_per_rank": [round(r["peak_bytes"] / mib, 1) for r in ranks],
        "parameters_and_optimizer_mib_per_rank": [round(r["held"]["parameters_and_optimizer"] / mib, 3) for r in ranks],
        "held_mib_rank0": {k: round(v / mib, 3) for k, v in ranks[0]["held"].items()},
        "setup_seconds_per_task": [round(max(rank_fits[f]["setup_seconds"] for rank_fits in fits), 3) for f in range(2)],
        "sharding_seconds_per_task": raw["sharding"]["seconds_per_fit"],
        "units_sharded_per_task": raw["sharding"]["units_sharded_per_fit"],
    }


def ratios(results: dict) -> dict:
    out = {}
    ddp, sharded = results.get("2 DDP ranks", {}), results.get("2 sharded ranks", {})
    for variant in VARIANTS:
        if variant in ddp and variant in sharded:
            a, b = ddp[variant], sharded[variant]
            out[variant] = {
                "sharded_over_ddp_parameters_and_optimizer": round(
                    max(b["parameters_and_optimizer_mib_per_rank"]) / max(a["parameters_and_optimizer_mib_per_rank"]), 3
                ),
                "sharded_over_ddp_peak": round(max(b["peak_mib_per_rank"]) / max(a["peak_mib_per_rank"]), 3),
                "sharded_over_ddp_step_time": round(b["step_seconds_median"] / a["step_seconds_median"], 3),
                "sharded_second_task_setup_over_first": round(b["setup_seconds_per_task"][1] / b["setup_seconds_per_task"][0], 3),
            }
    return out


def markdown(report: dict) -> str:
    lines = [
        "| variant | layout | params + optimizer MiB / rank | peak MiB / rank | tokens/s | step s (median) | set-up s (task 1, 2) |",
        "|---|---|---|---|---|---|---|",
    ]
    for layout, by_variant in report["results"].items():
        for variant, r in by_variant.items():
            lines.append(
                f"| {variant} | {layout} | {max(r['parameters_and_optimizer_mib_per_rank']):.2f} | "
                f"{max(r['peak_mib_per_rank']):.0f} | {r['tokens_per_second']:.0f} | {r['step_seconds_median']:.4f} | "
                f"{r['setup_seconds_per_task'][0]:.2f}, {r['setup_seconds_per_task'][1]:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="small", help="small (a 4-layer Llama, random) or a Hugging Face name, e.g. smollm2")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--steps", type=int, default=12, help="timed steps per task")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch")
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--smoke", action="store_true", help="full fine-tuning on 1 rank and 2 sharded ranks, 2 steps")
    parser.add_argument(
        "--out", default=None, help="folder of the JSON (default benchmarks/results; a smoke run: a temporary one)"
    )
    parser.add_argument("--worker", nargs=2, metavar=("LAYOUT", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    parser.add_argument("--run-root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.variants, args.layouts, args.steps, args.warmup, args.max_length = "full", "1 rank,2 sharded ranks", 2, 1, 48
    if args.worker:
        args.layout, args.variant = args.worker
        worker(args)
        return
    results = Path(__file__).resolve().parent / "results"
    if args.smoke and args.out and Path(args.out).resolve() == results:
        sys.exit(f"a smoke run never writes into {results}: pass another --out")
    out = Path(args.out or (tempfile.mkdtemp(prefix="clight_scale_smoke_") if args.smoke else results))
    out.mkdir(parents=True, exist_ok=True)
    gpus = torch.cuda.device_count() if args.device == "cuda" else None
    report: dict = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU ({os.cpu_count()} cores), 1 thread per rank",
        "model": args.model if args.model != "small" else {"random Llama": SMALL_LLAMA},
        "precision": args.precision,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "timed_steps_per_task": args.steps,
        "load_average_at_start": os.getloadavg()[0],  # other jobs on the machine: step times are only as good as this
        "skipped": {},
        "failed": {},
        "results": {},
    }
    run_root = tempfile.mkdtemp(prefix="clight_scale_")  # the runs' folders: not results
    env = dict(os.environ, PL_DISABLE_FORK="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    for name in args.layouts.split(","):
        if gpus is not None and LAYOUTS[name][1] > gpus:
            report["skipped"][name] = f"needs {LAYOUTS[name][1]} GPUs; this machine has {gpus}"
            continue
        for variant in args.variants.split(","):
            result_file = Path(run_root) / f"{LAYOUTS[name][0]}_{variant}.json"
            command = [sys.executable, __file__, "--worker", name, variant, "--result-file", str(result_file)]
            command += ["--run-root", run_root] + _passed_on(args)
            started = time.perf_counter()
            run = subprocess.run(command, env=env, capture_output=True, text=True)
            if run.returncode != 0:  # reported in the JSON, and the other runs go on
                report["failed"][f"{name} / {variant}"] = run.stderr[-2000:]
                print(f"{name} / {variant} failed:\n{run.stderr[-4000:]}", file=sys.stderr, flush=True)
                continue
            raw = json.loads(result_file.read_text())
            result_file.unlink()
            report["results"].setdefault(name, {})[variant] = summarize(raw, args.warmup)
            print(f"{name:>16} {variant:>5}: {time.perf_counter() - started:.0f} s", flush=True)
    shutil.rmtree(run_root, ignore_errors=True)
    report["load_average_at_end"] = os.getloadavg()[0]
    report = {"ratios": ratios(report["results"]), **report}
    suffix = "" if args.device == "cpu" else f"_{args.device}"
    path = out / f"scale{suffix}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ratios"], indent=2))
    print(markdown(report))
    print(f"written to {path}")


def _passed_on(args) -> list[str]:
    flags = ["--device", args.device, "--model", args.model, "--precision", args.precision, "--steps", str(args.steps)]
    flags += ["--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
    return flags + (["--smoke"] if args.smoke else [])


if __name__ == "__main__":
    main()
