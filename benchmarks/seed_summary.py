"""Mean and standard deviation over seeds of finished runs, class-incremental and task-aware.

``clight compare`` tabulates runs of one seed. This script reads the run folders of several seeds
(``ROOT/<seed>/<method>/``, as ``clight compare --run_root ROOT/<seed> --seed_everything=<seed>``
leaves them) and writes, per method, the mean +- standard deviation (ddof 1) over seeds of the
final average accuracy, backward transfer and forgetting, from the class-incremental accuracy
matrix and, where the run has one, the task-aware matrix of a single-head model, and the runs' wall seconds (as the run
folders record them). Extra single-seed-per-folder runs (e.g. a
task-incremental CLR) are added with ``--extra NAME=RUN_DIR ...``.

    python benchmarks/seed_summary.py runs/pretrained_fmnist/seed0 runs/pretrained_fmnist/seed1 \\
        runs/pretrained_fmnist/seed2 --out benchmarks/results/pretrained_fmnist
    python benchmarks/seed_summary.py --smoke --out /tmp/seed_summary    # synthetic folders, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from clight.metrics import average_accuracy, backward_transfer, forgetting

MATRICES = {"correct": "class-incremental", "correct_task_aware": "task-aware"}


def run_metrics(run_dir: Path) -> dict:
    """AA, BWT and forgetting of one finished run's matrices, and its wall time."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    if manifest.get("status") != "finished":
        raise ValueError(f"{run_dir} is not finished (status {manifest.get('status')!r}); finish it first")
    out: dict = {"wall_time_seconds": float(sum(manifest["wall_time_per_task"]))}
    metrics_file = run_dir / "metrics.json"
    setting = json.loads(metrics_file.read_text()).get("data", {}).get("setting") if metrics_file.is_file() else None
    kinds = dict(MATRICES)
    if setting == "task_incremental":  # a task id is given at test: its accuracy is task-aware (CLR)
        kinds = {"correct": "task-aware"}
    for key, label in kinds.items():
        if key in manifest["matrices"]:
            matrix = np.array(manifest["matrices"][key], dtype=float)
            out[label] = {
                "average_accuracy": average_accuracy(matrix),
                "backward_transfer": backward_transfer(matrix),
                "forgetting": forgetting(matrix),
                "final_row": matrix[-1].tolist(),
            }
    return out


def mean_std(values: list[float]) -> dict:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, "n": len(values)}


def summarize(groups: dict[str, list[Path]]) -> dict:
    """``{method: {matrix kind: {metric: mean_std}, "seeds": [...per run...]}}``."""
    summary = {}
    for name, folders in groups.items():
        runs = [run_metrics(folder) for folder in folders]
        entry: dict = {"runs": [str(f) for f in folders], "per_run": runs}
        entry["wall_time_seconds"] = mean_std([r["wall_time_seconds"] for r in runs])
        for label in MATRICES.values():
            if runs and all(label in r for r in runs):
                entry[label] = {
                    m: mean_std([r[label][m] for r in runs]) for m in ("average_accuracy", "backward_transfer", "forgetting")
                }
        summary[name] = entry
    return summary


def _cell(stat: Optional[dict], scale: float = 100.0) -> str:
    if not stat or stat["mean"] is None:
        return "—"
    return f"{scale * stat['mean']:.1f} ± {scale * stat['std']:.1f}"


def markdown(summary: dict) -> str:
    lines = [
        "| method | seeds | AA (CIL) | BWT (CIL) | forgetting (CIL) | AA (task-aware) | BWT (task-aware) | wall time / run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in summary.items():
        cil, aware = entry.get("class-incremental", {}), entry.get("task-aware", {})
        lines.append(
            f"| {name} | {entry['wall_time_seconds']['n']} | {_cell(cil.get('average_accuracy'))} | "
            f"{_cell(cil.get('backward_transfer'))} | {_cell(cil.get('forgetting'))} | {_cell(aware.get('average_accuracy'))} | "
            f"{_cell(aware.get('backward_transfer'))} | {_cell(entry['wall_time_seconds'], 1.0)} s |"
        )
    return "\n".join(lines) + "\n\nMean ± standard deviation over seeds (ddof 1), in %; BWT in percentage points.\n"


def group_runs(roots: list[Path], extra: list[str]) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    for root in roots:
        for folder in sorted(p for p in root.iterdir() if (p / "manifest.json").is_file()):
            groups.setdefault(folder.name, []).append(folder)
    for item in extra:
        name, _, folder = item.partition("=")
        if not folder:
            raise ValueError(f"--extra {item!r}: expected NAME=RUN_DIR")
        groups.setdefault(name, []).append(Path(folder))
    return groups


def smoke_roots(base: Path) -> list[Path]:
    """Two seeds of two synthetic finished runs (a 2-task matrix each), for ``--smoke``."""
    roots = []
    for seed, shift in enumerate((0.0, 0.1)):
        for name, drop in (("a", 0.2), ("b", 0.0)):
            folder = base / f"seed{seed}" / name
            folder.mkdir(parents=True)
            matrix = [[0.9 - shift, 0.0], [0.9 - shift - drop, 0.8]]
            manifest = {
                "status": "finished",
                "wall_time_per_task": [1.0, 2.0],
                "matrices": {"correct": matrix, "correct_task_aware": matrix},
            }
            (folder / "manifest.json").write_text(json.dumps(manifest))
        roots.append(base / f"seed{seed}")
    return roots


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="*", type=Path, help="one run root per seed (ROOT/<seed>)")
    parser.add_argument("--extra", nargs="*", default=[], help="NAME=RUN_DIR runs to add (one seed each)")
    parser.add_argument("--out", type=Path, required=True, help="folder for seed_summary.json and seed_summary.md")
    parser.add_argument("--smoke", action="store_true", help="summarise synthetic run folders (a check of the script)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        roots = smoke_roots(Path(tmp)) if args.smoke else args.roots
        if not roots:
            parser.error("give run roots (one per seed), or --smoke")
        summary = summarize(group_runs(roots, args.extra))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "seed_summary.json").write_text(json.dumps(summary, indent=1))
    (args.out / "seed_summary.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
