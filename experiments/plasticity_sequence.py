"""Long-sequence plasticity experiment: a lean loop over many short tasks.

Reads the same YAML as ``clight fit --config configs/plasticity_*.yaml`` (model, data, methods,
trainer) but, instead of the SequenceRunner's all-tasks evaluation (a T x T matrix, wasteful for
hundreds of tasks), evaluates only the task just trained ("new-task accuracy"). Each task gets a
fresh Lightning Trainer and optimizer, and the method callbacks are created once and reused, as
under the runner.

    python experiments/plasticity_sequence.py configs/plasticity_cbp.yaml [--tasks N] [--out DIR]
    python experiments/plasticity_sequence.py --compare DIR/*.json --plot docs/img/plasticity_sequence.png
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from clight.methods.plasticity import PlasticityMonitor
from clight.methods.plasticity.monitor import plot_history


def _class(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def instantiate(spec: Any) -> Any:
    """``{class_path, init_args}`` -> object, recursively (a tiny subset of jsonargparse)."""
    if isinstance(spec, dict) and "class_path" in spec:
        args = {k: instantiate(v) for k, v in (spec.get("init_args") or {}).items()}
        return _class(spec["class_path"])(**args)
    if isinstance(spec, list):
        return [instantiate(v) for v in spec]
    if isinstance(spec, dict):
        return {k: instantiate(v) for k, v in spec.items()}
    return spec


def optimizer_factory(spec: dict):
    cls, args = _class(spec["class_path"]), dict(spec.get("init_args") or {})
    return lambda params: cls(params, **args)


def build(config: dict, num_tasks: int | None = None):
    model_spec = dict(config["model"])
    init_args = dict(model_spec.get("init_args") or {})
    optimizer = optimizer_factory(init_args.pop("optimizer"))
    model = _class(model_spec["class_path"])(optimizer=optimizer, **instantiate(init_args))
    data_args = dict(config["data"])
    if num_tasks is not None:
        data_args["scenario"]["init_args"]["num_tasks"] = num_tasks
    data = _class("clight.data.TaskSequence")(**instantiate(data_args))
    methods = instantiate(config.get("methods") or [])
    return model, data, methods


@torch.no_grad()
def accuracy(model, loader) -> float:
    model.eval()
    correct = total = 0
    for batch in loader:
        counts = model.evaluation_counts(batch)
        correct += int(counts["correct"])
        total += int(counts["total"])
    model.train()  # Lightning >= 2.2 keeps a module's eval mode when the next fit starts
    return correct / max(total, 1)


def run_name(config: dict) -> str:
    return Path(config.get("run_dir", "run")).name


def run(config: dict, num_tasks: int | None = None, out: Path | None = None) -> dict:
    L.seed_everything(config.get("seed_everything", 0), workers=True, verbose=False)
    model, data, methods = build(config, num_tasks)
    monitor = next((m for m in methods if isinstance(m, PlasticityMonitor)), None)
    trainer_args = dict(config.get("trainer") or {})
    trainer_args.update(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    model.setup_sequence(data.info)
    for m in methods:
        m.setup_sequence(model, data)
    accs, started = [], time.time()
    for task in data.tasks:
        data.set_task(task.index)
        model.on_task_start(task)
        for m in methods:
            m.on_task_start(model, task)
        L.Trainer(callbacks=methods, **trainer_args).fit(model, datamodule=data)
        model.on_task_end(task)
        for m in methods:
            m.on_task_end(model, task)
        accs.append(accuracy(model, data.evaluation_loader(task.index)))
        if task.index % 10 == 0 or task.index == len(data.tasks) - 1:
            recent = accs[-10:]
            print(f"[{run_name(config)}] task {task.index}: new-task accuracy {accs[-1]:.3f}, mean of last {len(recent)} {sum(recent) / len(recent):.3f}  ({time.time() - started:.0f}s)", flush=True)
    result = {
        "name": run_name(config),
        "new_task_accuracy": accs,
        "plasticity": monitor.history if monitor else [],
        "methods": [m.describe() for m in methods],
        "seconds": time.time() - started,
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{result['name']}.json").write_text(json.dumps(result))
    return result


def compare(results: list[dict], plot: Path, window: int = 10) -> str:
    """A markdown table (first / last ``window`` tasks) and a plot of all runs."""
    plot_history({r["name"]: r["plasticity"] for r in results}, plot, extra={r["name"]: r["new_task_accuracy"] for r in results})
    rows = ["| run | new-task acc, first %d | new-task acc, last %d | dead units (last) | effective rank (first -> last) | weight magnitude (first -> last) |" % (window, window), "|---|---|---|---|---|---|"]
    for r in results:
        a, p = r["new_task_accuracy"], r["plasticity"]
        first, last = sum(a[:window]) / len(a[:window]), sum(a[-window:]) / len(a[-window:])
        rows.append(
            f"| {r['name']} | {first:.3f} | {last:.3f} | {p[-1]['dead_fraction']:.3f} | {p[0]['effective_rank']:.1f} -> {p[-1]['effective_rank']:.1f} "
            f"| {p[0]['weight_magnitude']:.4f} -> {p[-1]['weight_magnitude']:.4f} |"
        )
    return "\n".join(rows)


def main() -> None:
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", type=Path)
    parser.add_argument("--tasks", type=int, default=None, help="override the number of tasks")
    parser.add_argument("--out", type=Path, default=Path("runs/plasticity"))
    parser.add_argument("--compare", nargs="*", type=Path, default=None, help="result JSONs to tabulate and plot")
    parser.add_argument("--plot", type=Path, default=Path("docs/img/plasticity_sequence.png"))
    args = parser.parse_args()
    for path in args.configs:
        run(yaml.safe_load(path.read_text()), args.tasks, args.out)
    if args.compare:
        print(compare([json.loads(p.read_text()) for p in args.compare], args.plot))


if __name__ == "__main__":
    main()
