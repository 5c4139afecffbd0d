"""Compare plasticity runs: new-task accuracy and plasticity statistics over a long sequence.

Reads run folders made by ``clight fit --config configs/plasticity_*.yaml`` (``metrics.json``
with ``new_task_accuracy``; ``plasticity.json`` from the ``PlasticityMonitor``), prints a
markdown table of the first and last ``window`` tasks and plots every run.

    python -m clight.methods.plasticity.compare runs/plasticity/* --plot plasticity.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from clight.methods.plasticity.monitor import plot_history


def load_run(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if "new_task_accuracy" in metrics:
        accuracy = metrics["new_task_accuracy"]
    else:
        accuracy = list(np.diag(np.loadtxt(run_dir / "accuracy_matrix.csv", delimiter=",", skiprows=1)[:, 1:]))
    history_path = run_dir / "plasticity.json"
    history = json.loads(history_path.read_text()) if history_path.exists() else []
    return {"name": run_dir.name, "new_task_accuracy": accuracy, "plasticity": history}


def compare(runs: Sequence[dict], plot: Path, window: int = 10) -> str:
    plot_history({r["name"]: r["plasticity"] for r in runs}, plot, extra={r["name"]: r["new_task_accuracy"] for r in runs})
    rows = [
        f"| run | new-task accuracy, first {window} tasks | new-task accuracy, last {window} tasks | dead units (last) "
        "| effective rank (first -> last) | weight magnitude (first -> last) |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        a, p = r["new_task_accuracy"], r["plasticity"]
        first, last = float(np.mean(a[:window])), float(np.mean(a[-window:]))
        stats = (
            f"{p[-1]['dead_fraction']:.3f} | {p[0]['effective_rank']:.1f} -> {p[-1]['effective_rank']:.1f} "
            f"| {p[0]['weight_magnitude']:.4f} -> {p[-1]['weight_magnitude']:.4f}"
            if p else "n/a | n/a | n/a"
        )
        rows.append(f"| {r['name']} | {first:.3f} | {last:.3f} | {stats} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    parser.add_argument("--plot", type=Path, default=Path("plasticity_sequence.png"))
    parser.add_argument("--window", type=int, default=10)
    args = parser.parse_args(argv)
    print(compare([load_run(r) for r in args.runs], args.plot, args.window))


if __name__ == "__main__":
    main()
